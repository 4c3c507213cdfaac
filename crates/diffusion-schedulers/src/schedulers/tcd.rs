crate::placeholder_scheduler!("TCDScheduler");
