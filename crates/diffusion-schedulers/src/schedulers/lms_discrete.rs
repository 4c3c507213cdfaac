crate::placeholder_scheduler!("LMSDiscreteScheduler");
