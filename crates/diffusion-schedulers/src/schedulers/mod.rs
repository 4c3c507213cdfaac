//! One file per scheduler, named after diffusers' `scheduling_*.py`.

pub mod ddim;
pub mod ddpm;
pub mod deis_multistep;
pub mod dpmsolver_multistep;
pub mod dpmsolver_singlestep;
pub mod edm_euler;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod flow_match_euler_discrete;
pub mod heun_discrete;
pub mod k_dpm_2_ancestral_discrete;
pub mod k_dpm_2_discrete;
pub mod lcm;
pub mod lms_discrete;
pub mod pndm;
pub mod tcd;
pub mod unipc_multistep;
