crate::placeholder_scheduler!("PNDMScheduler");
