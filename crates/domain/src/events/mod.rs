//! The event contract: inputs crmflow consumes and outputs it publishes.

pub mod input;
pub mod output;

pub use input::*;
pub use output::*;
