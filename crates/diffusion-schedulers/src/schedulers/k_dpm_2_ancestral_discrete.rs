crate::placeholder_scheduler!("KDPM2AncestralDiscreteScheduler");
