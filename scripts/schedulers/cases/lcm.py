from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "LCMScheduler"
CASES = [
    case(C, "default", {}, steps=4),
    # One epsilon step from t = 999 is x0 = (x - sqrt(1 - a) * eps) / sqrt(a) with eps ~ x: a
    # 300-fold cancellation that turns the test model's float32 rounding into ~1e-5 noise, so the
    # one-step cases use v-prediction or start lower (diffusers' one-step value is a unit test).
    case(C, "one_step_v", {"prediction_type": "v_prediction"}, steps=1),
    case(C, "one_step_strength", {}, set_timesteps={"num_inference_steps": 1, "strength": 0.6}),
    case(C, "two_steps", {}, steps=2),
    case(C, "three_steps", {}, steps=3),
    case(C, "seven_steps", {}, steps=7),
    case(C, "max_steps", {}, steps=50),
    case(C, "linear", LINEAR, steps=6),
    case(C, "cosine_v", {**COSINE, "prediction_type": "v_prediction"}, steps=5),
    case(C, "cosine_clipped", {**COSINE, "clip_sample": True}, steps=3),
    case(C, "trained_betas", {"trained_betas": trained_betas()}, steps=4),
    case(C, "v_prediction", {"prediction_type": "v_prediction"}, steps=4),
    case(C, "sample_pred", {"prediction_type": "sample"}, steps=4),
    case(C, "clip_sample", {"clip_sample": True, "clip_sample_range": 1.5}, steps=4),
    case(C, "thresholding", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}, steps=4),
    case(C, "thresholding_v", {"thresholding": True, "sample_max_value": 2.0, "prediction_type": "v_prediction"}, steps=6),
    case(C, "zero_snr_v", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, steps=4),
    case(C, "no_alpha_to_one", {"set_alpha_to_one": False}, steps=4),
    case(C, "timestep_scaling_1", {"timestep_scaling": 1.0}, steps=4),
    case(C, "spacing_ignored", {"timestep_spacing": "trailing", "steps_offset": 1}, steps=4),
    case(C, "config_original_25", {"original_inference_steps": 25}, steps=8),
    case(C, "original_steps_kwarg", {}, set_timesteps={"num_inference_steps": 6, "original_inference_steps": 100}),
    case(C, "original_steps_kwarg_odd", {}, set_timesteps={"num_inference_steps": 7, "original_inference_steps": 33}),
    case(C, "strength", {}, set_timesteps={"num_inference_steps": 4, "strength": 0.5}),
    case(C, "strength_odd", {}, set_timesteps={"num_inference_steps": 3, "strength": 0.37}),
    case(C, "custom_timesteps", {}, set_timesteps={"timesteps": [999, 759, 499, 259]}),
    case(C, "custom_off_grid", {}, set_timesteps={"timesteps": [900, 650, 333, 100, 0]}),
    case(C, "custom_strength", {}, set_timesteps={"timesteps": [999, 759, 499, 259], "strength": 0.5}),
    case(C, "train_500", {"num_train_timesteps": 500}, steps=5),
    case(C, "train_100_original_100", {"num_train_timesteps": 100, "original_inference_steps": 100}, steps=10),
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "trailing"}, source_class="DDIMScheduler", steps=4),
    case(C, "from_tcd_config", {"original_inference_steps": 40, "prediction_type": "v_prediction"}, source_class="TCDScheduler", steps=5),
]
