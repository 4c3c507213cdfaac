crate::placeholder_scheduler!("HeunDiscreteScheduler");
