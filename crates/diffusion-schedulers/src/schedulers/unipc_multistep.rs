crate::placeholder_scheduler!("UniPCMultistepScheduler");
