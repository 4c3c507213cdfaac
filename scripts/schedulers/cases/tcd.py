from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "TCDScheduler"
DET = {"eta": 0.0}
CASES = [
    case(C, "default", {}, steps=4),
    case(C, "deterministic", {}, steps=4, step_kwargs=DET),
    # One epsilon step from t = 999 is x0 = (x - sqrt(1 - a) * eps) / sqrt(a) with eps ~ x: a
    # 300-fold cancellation that turns the test model's float32 rounding into ~1e-5 noise, so the
    # one-step cases use v-prediction or start lower (diffusers' one-step value is a unit test).
    case(C, "one_step_v", {"prediction_type": "v_prediction"}, steps=1),
    case(C, "one_step_strength", {}, set_timesteps={"num_inference_steps": 1, "strength": 0.6}),
    case(C, "two_steps", {}, steps=2),
    case(C, "three_steps_eta_half", {}, steps=3, step_kwargs={"eta": 0.5}),
    case(C, "seven_steps", {}, steps=7),
    case(C, "eta_one", {}, steps=6, step_kwargs={"eta": 1.0}),
    case(C, "eta_small", {}, steps=8, step_kwargs={"eta": 0.1}),
    case(C, "eta_07", {}, steps=10, step_kwargs={"eta": 0.7}),
    case(C, "max_steps", {}, steps=50),
    case(C, "linear", LINEAR, steps=6),
    case(C, "cosine_v", {**COSINE, "prediction_type": "v_prediction"}, steps=5),
    case(C, "trained_betas", {"trained_betas": trained_betas()}, steps=4),
    case(C, "v_prediction", {"prediction_type": "v_prediction"}, steps=4),
    case(C, "sample_pred", {"prediction_type": "sample"}, steps=4),
    case(C, "clip_and_threshold_ignored", {"clip_sample": True, "thresholding": True, "clip_sample_range": 0.1}, steps=4),
    case(C, "zero_snr_v", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, steps=4),
    case(C, "no_alpha_to_one", {"set_alpha_to_one": False}, steps=4, step_kwargs=DET),
    case(C, "config_original_25", {"original_inference_steps": 25}, steps=8),
    case(C, "original_steps_kwarg", {}, set_timesteps={"num_inference_steps": 6, "original_inference_steps": 100}),
    case(C, "original_steps_kwarg_strength", {}, set_timesteps={"num_inference_steps": 5, "original_inference_steps": 20, "strength": 0.6}),
    case(C, "strength", {}, set_timesteps={"num_inference_steps": 4, "strength": 0.5}),
    case(C, "strength_odd", {}, set_timesteps={"num_inference_steps": 3, "strength": 0.37}),
    case(C, "custom_timesteps", {}, set_timesteps={"timesteps": [999, 759, 499, 259]}),
    case(C, "custom_off_grid", {}, set_timesteps={"timesteps": [900, 650, 333, 100, 0]}, step_kwargs={"eta": 0.4}),
    case(C, "custom_strength", {}, set_timesteps={"timesteps": [999, 759, 499, 259], "strength": 0.5}),
    case(C, "train_500", {"num_train_timesteps": 500}, steps=5),
    case(C, "from_lcm_config", {"original_inference_steps": 40, "prediction_type": "v_prediction"}, source_class="LCMScheduler", steps=5),
]
