//! The bridge: what joins the XMPP side and the Teams side. These modules are
//! its pure parts — identities, the presence mapping, contact cards — each
//! tested on its own; the services that drive them arrive with issue 5.

pub mod cards;
pub mod credentials;
pub mod directory;
pub mod identity;
pub mod presence;
pub mod shadow;
pub mod vcard;
