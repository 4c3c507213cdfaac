crate::placeholder_scheduler!("EulerAncestralDiscreteScheduler");
