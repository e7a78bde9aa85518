//! The Teams users of our domain: who may federate (the internal allow list,
//! `directory`) and the JID each one has (`identity`).

pub mod directory;
pub mod identity;
