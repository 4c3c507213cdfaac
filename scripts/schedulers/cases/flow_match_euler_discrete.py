import diffusers

from cases._matrix import case

# diffusers' FlowMatchEulerDiscreteScheduler has no `init_noise_sigma` (flow pipelines start from
# unscaled noise) and no `scale_model_input` (the generator then uses m = x). The generator reads
# `scheduler.init_noise_sigma`, so give the class the value its pipelines use: 1.
if not hasattr(diffusers.FlowMatchEulerDiscreteScheduler, "init_noise_sigma"):
    diffusers.FlowMatchEulerDiscreteScheduler.init_noise_sigma = 1.0

C = "FlowMatchEulerDiscreteScheduler"
SD3 = {"shift": 3.0}
FLUX = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
        "max_image_seq_len": 4096}
CASES = [
    case(C, "default", {}),
    case(C, "sd3_shift3", SD3, steps=28),
    case(C, "shift_1p15", {"shift": 1.15}, steps=9),
    # One default step goes from sigma 1 to 0: x - x * 1000/1001 keeps 1e-3 of x, so the dummy
    # model's float32 rounding is amplified 1000x (diffusers' own float32 result is off by ~4e-5).
    # A single step from a lower sigma is well-conditioned.
    case(C, "one_step", SD3, set_timesteps={"sigmas": [0.5]}),
    case(C, "two_steps", SD3, set_timesteps={"sigmas": [0.9, 0.45]}),
    case(C, "steps_7", {}, steps=7),
    case(C, "train_500", {"num_train_timesteps": 500, "shift": 2.0}, steps=13),
    case(C, "dynamic_exp", FLUX, set_timesteps={"num_inference_steps": 10, "mu": 0.5}),
    case(C, "dynamic_exp_mu115", FLUX, set_timesteps={"num_inference_steps": 25, "mu": 1.15}),
    case(C, "dynamic_linear", {**FLUX, "time_shift_type": "linear"}, set_timesteps={"num_inference_steps": 10, "mu": 1.7}),
    case(C, "shift_terminal", {**SD3, "shift_terminal": 0.1}),
    case(C, "dynamic_shift_terminal", {**FLUX, "shift_terminal": 0.02}, set_timesteps={"num_inference_steps": 12, "mu": 0.8}),
    case(C, "invert_sigmas", {"invert_sigmas": True, "shift": 2.0}, steps=8),
    case(C, "karras", {**SD3, "use_karras_sigmas": True}),
    case(C, "exponential", {**SD3, "use_exponential_sigmas": True}),
    case(C, "beta_sigmas", {**SD3, "use_beta_sigmas": True}, steps=9),
    case(C, "stochastic", {**SD3, "stochastic_sampling": True}, steps=6),
    case(C, "stochastic_dynamic", {**FLUX, "stochastic_sampling": True}, set_timesteps={"num_inference_steps": 5, "mu": 0.6}, seed=3),
    case(C, "custom_sigmas", SD3, set_timesteps={"sigmas": [1.0, 0.8, 0.55, 0.3, 0.12, 0.05]}),
    case(C, "custom_sigmas_dynamic", FLUX, set_timesteps={"sigmas": [1.0, 0.75, 0.5, 0.25, 0.1], "mu": 0.9}),
    case(C, "custom_sigmas_linear_shift", {**FLUX, "time_shift_type": "linear"}, set_timesteps={"sigmas": [0.97, 0.7, 0.41, 0.2], "mu": 1.3}),
    case(C, "custom_sigmas_steps", {"shift": 1.15}, set_timesteps={"num_inference_steps": 4, "sigmas": [0.9, 0.6, 0.35, 0.1]}),
    case(C, "custom_sigmas_karras", {**SD3, "use_karras_sigmas": True}, set_timesteps={"sigmas": [0.99, 0.7, 0.4, 0.2, 0.05]}),
    case(C, "custom_sigmas_terminal", {**SD3, "shift_terminal": 0.05}, set_timesteps={"sigmas": [1.0, 0.66, 0.33, 0.1]}),
    case(C, "custom_timesteps", SD3, set_timesteps={"timesteps": [1000.0, 800.0, 600.5, 400.25, 200.0, 50.0]}),
    case(C, "custom_sigmas_and_timesteps", SD3, set_timesteps={"sigmas": [1.0, 0.7, 0.4, 0.1], "timesteps": [999.0, 700.0, 400.0, 100.0]}),
    case(C, "custom_timesteps_invert", {"invert_sigmas": True}, set_timesteps={"timesteps": [900.0, 600.0, 300.0]}),
    case(C, "from_own_config", {**SD3, "shift_terminal": 0.2, "stochastic_sampling": False}, source_class=C, steps=6),
]
