crate::placeholder_scheduler!("DDPMScheduler");
