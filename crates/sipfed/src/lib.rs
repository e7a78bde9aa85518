//! The SIP federation edge (issue 17): what a Skype for Business Server
//! Access Edge, or Microsoft's federation host for Teams
//! (`sipfed.online.lync.com`), federates with. SIP over mutual TLS on 5061,
//! one module per concern:
//!
//! - `framing`: SIP messages and keep-alives cut from a TLS byte stream,
//!   bounded in size and header count (RFC 3261 §18.3, RFC 5626 §3.5.1);
//! - `message`: a parsed message, its headers and body;
//! - `tls`: the mutual-TLS configurations and the peer's certificate rules
//!   (its SIP domain or edge FQDN in the SAN, no wildcard, server and client
//!   usage);
//! - `im`: 1:1 IM sessions as Microsoft federates them (INVITE with the
//!   first message, in-dialog MESSAGE, INFO typing, BYE, 481);
//! - `edge`: the listener and outbound connections: OPTIONS and keep-alives
//!   answered, IM requests answered and sent.
//!
//! Why `ezk-sip-types` for the syntax: it is maintained (2025–2026 releases),
//! MIT, brings no TLS or runtime of its own (the gateway keeps one TLS stack,
//! rustls with aws-lc-rs), reads the compact header forms (`i`, `v`, `l`…)
//! that `rsip` (unreleased since 2022) does not, and offers a pull parser
//! made for framing on a stream. Transactions over TLS need no
//! retransmission, so they are ours and small.

mod connection;
pub mod edge;
pub mod framing;
pub mod im;
pub mod message;
pub mod tls;

pub use edge::{Edge, EdgeError};
pub use framing::{Frame, FrameError, Framer, Limits};
pub use im::ImEvent;
pub use message::Message;
