crate::placeholder_scheduler!("LCMScheduler");
