//! Every scheduler refuses bad configs and calls with a typed error naming the
//! field or call, and none panics. Also: any scheduler builds from any other's
//! config (diffusers' `from_config` / `_compatibles`).

use diffusion_schedulers::{
    CpuTensor, NoNoise, QueuedNoise, SCHEDULER_CLASSES, Scheduler, SchedulerError, SchedulerTensor,
    StepOptions, from_config, from_config_as,
};
use serde_json::{Value, json};

fn build(class: &str, config: Value) -> Box<dyn Scheduler<CpuTensor>> {
    from_config_as::<CpuTensor>(class, &config)
        .unwrap_or_else(|e| panic!("{class}: {e}"))
        .scheduler
}

fn x(shape: &[usize], v: f32) -> CpuTensor {
    CpuTensor::new(vec![v; shape.iter().product()], shape.to_vec()).unwrap()
}

#[test]
fn unknown_scheduler_and_missing_class_name() {
    let err = from_config_as::<CpuTensor>("FancyScheduler", &json!({})).unwrap_err();
    assert_eq!(
        err,
        SchedulerError::UnknownScheduler("FancyScheduler".into())
    );
    let err = from_config::<CpuTensor>(&json!({"beta_start": 0.001})).unwrap_err();
    assert!(
        matches!(err, SchedulerError::InvalidConfig { ref field, .. } if field == "_class_name")
    );
    let err = from_config::<CpuTensor>(&json!([1, 2])).unwrap_err();
    assert!(matches!(
        err,
        SchedulerError::InvalidConfig { .. } | SchedulerError::InvalidJson(_)
    ));
}

#[test]
fn unknown_fields_are_tolerated_and_reported() {
    for class in SCHEDULER_CLASSES {
        let loaded =
            from_config_as::<CpuTensor>(class, &json!({"_class_name": "X", "not_a_field": 3}))
                .unwrap_or_else(|e| panic!("{class}: {e}"));
        assert_eq!(
            loaded.ignored_fields,
            vec!["not_a_field".to_string()],
            "{class}"
        );
    }
}

#[test]
fn bad_enum_values_name_the_field() {
    for class in SCHEDULER_CLASSES {
        let config = build(class, json!({})).config();
        for field in ["prediction_type", "beta_schedule", "timestep_spacing"] {
            if config.get(field).is_none() {
                continue;
            }
            let err =
                from_config_as::<CpuTensor>(class, &json!({ field: "no_such_value" })).unwrap_err();
            assert!(
                matches!(&err, SchedulerError::InvalidConfig { field: f, .. } | SchedulerError::InvalidValue { field: f, .. } if f == field),
                "{class}.{field}: {err}"
            );
        }
        let err = from_config_as::<CpuTensor>(class, &json!({"num_train_timesteps": "many"}))
            .unwrap_err();
        assert!(
            matches!(&err, SchedulerError::InvalidConfig { field, .. } if field == "num_train_timesteps"),
            "{class}: {err}"
        );
    }
}

#[test]
fn beta_end_below_beta_start_is_an_error() {
    for class in SCHEDULER_CLASSES {
        let config = build(class, json!({})).config();
        if config.get("beta_start").is_none() {
            continue;
        }
        let bad = json!({"beta_start": 0.02, "beta_end": 0.001, "beta_schedule": "linear"});
        let err = from_config_as::<CpuTensor>(class, &bad).unwrap_err();
        assert!(
            matches!(&err, SchedulerError::InvalidValue { field, .. } if field == "beta_end"),
            "{class}: {err}"
        );
    }
}

#[test]
fn num_inference_steps_out_of_range() {
    for class in SCHEDULER_CLASSES {
        let mut s = build(class, json!({}));
        let n = s.num_train_timesteps();
        for bad in [0, n + 1] {
            let Err(err) = s.set_timesteps(bad) else {
                panic!("{class}: set_timesteps({bad}) accepted")
            };
            assert!(
                matches!(&err, SchedulerError::InvalidArgument { field, .. } if *field == "num_inference_steps"),
                "{class} steps={bad}: {err}"
            );
        }
    }
}

#[test]
fn step_before_set_timesteps() {
    // DDPM is the exception, as in diffusers: without `set_timesteps` it steps the
    // training schedule (t -> t - 1), which training-time samplers rely on.
    for class in SCHEDULER_CLASSES.iter().filter(|c| **c != "DDPMScheduler") {
        let mut s = build(class, json!({}));
        let v = x(&[1, 2, 2, 2], 0.1);
        let err = s
            .step(&v, 500.0, &v, &StepOptions::default(), &mut NoNoise)
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NotInitialized(_)),
            "{class}: {err}"
        );
    }
}

#[test]
fn mismatched_shapes_and_non_finite_inputs() {
    for class in SCHEDULER_CLASSES {
        let mut s = build(class, json!({}));
        s.set_timesteps(10).unwrap();
        let t = s.timesteps()[0];
        let sample = x(&[1, 2, 2, 2], 0.1);
        let err = s
            .step(
                &x(&[1, 2, 2, 3], 0.1),
                t,
                &sample,
                &StepOptions::default(),
                &mut NoNoise,
            )
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::ShapeMismatch { .. }),
            "{class}: {err}"
        );
        let err = s
            .step(
                &x(&[1, 2, 2, 2], f32::NAN),
                t,
                &sample,
                &StepOptions::default(),
                &mut NoNoise,
            )
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NonFinite(_)),
            "{class}: {err}"
        );
        let err = s
            .step(
                &sample,
                t,
                &x(&[1, 2, 2, 2], f32::INFINITY),
                &StepOptions::default(),
                &mut NoNoise,
            )
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NonFinite(_)),
            "{class}: {err}"
        );
    }
}

/// Every scheduler builds from every other scheduler's full config and runs a
/// short loop: the swap a pipeline does with `--scheduler`.
#[test]
fn any_scheduler_from_any_config() {
    for source in SCHEDULER_CLASSES {
        let config = build(source, json!({})).config();
        for target in SCHEDULER_CLASSES {
            let loaded = from_config_as::<CpuTensor>(target, &config)
                .unwrap_or_else(|e| panic!("{target} from {source} config: {e}"));
            let mut s = loaded.scheduler;
            assert_eq!(s.class_name(), *target);
            s.set_timesteps(4)
                .unwrap_or_else(|e| panic!("{target} from {source}: {e}"));
            let mut v = x(&[1, 1, 2, 2], 0.5).scale(s.init_noise_sigma());
            let mut noise = QueuedNoise::new((0..64).map(|_| x(&[1, 1, 2, 2], 0.01)));
            for t in s.timesteps().to_vec() {
                let m = s.scale_model_input(&v, t).unwrap();
                v = s
                    .step(&m, t, &v, &StepOptions::default(), &mut noise)
                    .unwrap()
                    .prev_sample;
            }
            assert!(
                v.data().iter().all(|f| f.is_finite()),
                "{target} from {source}"
            );
        }
    }
}
