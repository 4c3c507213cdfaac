crate::placeholder_scheduler!("DPMSolverMultistepScheduler");
