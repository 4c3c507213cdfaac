crate::placeholder_scheduler!("EDMEulerScheduler");
