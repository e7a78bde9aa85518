//! Microsoft Graph as the tests meet it: the OpenAPI subset that holds the
//! emulator and the gateway's client to Microsoft's description, and the
//! emulator itself (an in-memory tenant on a loopback port).

pub mod emulator;
pub mod identity;
pub mod spec;
pub mod tenant;
pub mod throttling;

pub use emulator::GraphEmulator;
pub use tenant::Seed;
