//! Test helpers shared by integration tests.
pub mod mock_hub;
