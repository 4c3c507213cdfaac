crate::placeholder_scheduler!("KDPM2DiscreteScheduler");
