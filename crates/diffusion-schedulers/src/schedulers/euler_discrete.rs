crate::placeholder_scheduler!("EulerDiscreteScheduler");
