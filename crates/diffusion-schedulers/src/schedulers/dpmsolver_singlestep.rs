crate::placeholder_scheduler!("DPMSolverSinglestepScheduler");
