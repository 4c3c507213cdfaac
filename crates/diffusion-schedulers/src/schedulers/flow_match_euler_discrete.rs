crate::placeholder_scheduler!("FlowMatchEulerDiscreteScheduler");
