crate::placeholder_scheduler!("DEISMultistepScheduler");
