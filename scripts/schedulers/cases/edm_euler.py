from cases._matrix import case

C = "EDMEulerScheduler"
CASES = [
    case(C, "default", {}),
    case(C, "published_256", {"num_train_timesteps": 256, "sigma_min": 0.002, "sigma_max": 80.0}),
    # One or two steps from sigma_max = 80 down to 0.002 cancel so many digits that diffusers'
    # own f32 result is ~1.4e-5 off the exact value: use a narrower range there.
    case(C, "steps_1", {"sigma_min": 0.05, "sigma_max": 10.0}, steps=1),
    case(C, "steps_2", {"sigma_min": 0.05, "sigma_max": 10.0}, steps=2),
    case(C, "steps_3", {}, steps=3),
    case(C, "steps_7", {}, steps=7),
    case(C, "steps_25", {}, steps=25),
    case(C, "exponential", {"sigma_schedule": "exponential"}),
    case(C, "exponential_7", {"sigma_schedule": "exponential", "sigma_min": 0.01, "sigma_max": 50.0}, steps=7),
    case(C, "v_prediction", {"prediction_type": "v_prediction"}),
    case(C, "v_prediction_exponential", {"prediction_type": "v_prediction", "sigma_schedule": "exponential"}, steps=12),
    case(C, "final_sigma_min", {"final_sigmas_type": "sigma_min"}),
    case(C, "final_sigma_min_exponential", {"final_sigmas_type": "sigma_min", "sigma_schedule": "exponential"}),
    case(C, "sigma_data_1", {"sigma_data": 1.0}),
    case(C, "rho_5", {"rho": 5.0, "sigma_min": 0.02, "sigma_max": 120.0}, steps=15),
    case(C, "playground_like", {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "prediction_type": "epsilon",
                                "num_train_timesteps": 1000}, steps=20),
    case(C, "churn", {}, step_kwargs={"s_churn": 1.0}),
    case(C, "churn_window", {}, steps=12, step_kwargs={"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.007}),
    case(C, "churn_exponential_v", {"sigma_schedule": "exponential", "prediction_type": "v_prediction"},
         step_kwargs={"s_churn": 2.0, "s_tmin": 0.3}),
]
