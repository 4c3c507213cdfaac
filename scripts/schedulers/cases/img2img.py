"""img2img for every scheduler: set_begin_index + add_noise at the first kept timestep, then the
loop from there, exactly as diffusers' StableDiffusionImg2ImgPipeline drives a scheduler."""
import diffusers

from cases._matrix import SD, case

# See flow_match_euler_discrete.py: flow pipelines start from unscaled noise.
if not hasattr(diffusers.FlowMatchEulerDiscreteScheduler, "init_noise_sigma"):
    diffusers.FlowMatchEulerDiscreteScheduler.init_noise_sigma = 1.0

CLASSES = {
    "DDPMScheduler": {},
    "DDIMScheduler": {},
    "PNDMScheduler": {"skip_prk_steps": True},
    "LMSDiscreteScheduler": {},
    "EulerDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "HeunDiscreteScheduler": {},
    "KDPM2DiscreteScheduler": {},
    "KDPM2AncestralDiscreteScheduler": {},
    "DPMSolverMultistepScheduler": {},
    "DPMSolverSinglestepScheduler": {},
    "UniPCMultistepScheduler": {},
    "DEISMultistepScheduler": {},
    "LCMScheduler": {},
    "TCDScheduler": {},
    "FlowMatchEulerDiscreteScheduler": None,
    "EDMEulerScheduler": None,
}

CASES = []
for cls, extra in CLASSES.items():
    sd = {} if extra is None else {**SD, **extra}
    CASES.append(case(cls, f"{cls}_strength_0.6", sd, steps=10, img2img_strength=0.6))
    CASES.append(case(cls, f"{cls}_strength_0.35_steps_7", sd, steps=7, img2img_strength=0.35))
