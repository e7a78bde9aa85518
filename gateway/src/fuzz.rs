//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the
//! corpus replay in `cargo test`: each takes bytes as a remote party sends
//! them and runs the code the gateway runs on them. A panic, a hang or a
//! stack overflow in any of them is a bug; their results are thrown away.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream, DuplexStream};
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, accept_stream, initiate_stream};
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};
use xmpp_parsers::stream_error::StreamError;
use xmpp_parsers::stream_features::StreamFeatures;

use crate::bridge::text;
use crate::s2s::dialback::Dialback;
use crate::s2s::limits::{self, Limits, Received};
use crate::s2s::stanza::{self, Stanza};
use crate::s2s::transport::{ReadBudget, Transport};
use crate::s2s::{AnyUser, services, wire};

/// Bytes as a SIP federation peer sends them (the edge's framing and parser).
pub fn sip_stream(data: &[u8]) {
    xmppfed_sipfed::framing::fuzz_stream(data);
}

/// One element, as the bounded builder reads it, then every typed view of it.
pub fn s2s_element(data: &[u8]) {
    if let Ok(element) = limits::parse(data, Limits::default()) {
        element_views(element);
    }
}

/// What the stream tasks do with an element they have read.
fn element_views(element: Element) {
    let _ = wire::Control::parse(element.clone()).name().len();
    if Dialback::is_dialback(&element) {
        let _ = Dialback::parse(&element);
    }
    if element.is("features", wire::NS_STREAM) {
        let _ = StreamFeatures::try_from(element.clone());
    }
    if element.is("error", wire::NS_STREAM) {
        let _ = StreamError::try_from(element.clone());
    }
    if !stanza::is_stanza(&element) {
        return;
    }
    let Ok(stanza) = stanza::from_wire(element) else {
        return;
    };
    let _ = stanza::to_wire(stanza::duplicate(&stanza));
    let _ = stanza::error_reply(
        &stanza,
        DefinedCondition::ServiceUnavailable,
        ErrorType::Cancel,
        "fuzz",
    );
    if let Stanza::Message(message) = &stanza {
        bodies(message);
    }
    if let services::Handled::Answered(Some(reply)) = services::handle(&AnyUser, stanza) {
        let _ = stanza::to_wire(reply);
    }
}

fn bodies(message: &Message) {
    for body in message.bodies.values() {
        let _ = text::to_html(body);
    }
}

/// A whole stream from a peer: the first byte picks our side (even: the peer
/// connects to us; odd: we connect to the peer and read its features), the
/// rest is what the peer sends. Read to its end through tokio-xmpp's XML
/// stream and our bounded builder, as the s2s tasks read it.
pub fn s2s_stream(data: &[u8]) {
    let Some((&side, bytes)) = data.split_first() else {
        return;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(_) => return,
    };
    let (peer, ours) = tokio::io::duplex(64 * 1024);
    let read = limits::scoped(Limits::default(), read_stream(ours, side % 2 == 1));
    runtime.block_on(async {
        // A stream that neither ends nor fails within this time has hung.
        let both = async { tokio::join!(feed(peer, bytes), read) };
        if tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .is_err()
        {
            panic!("the stream reader did not finish on {} bytes", bytes.len());
        }
    });
}

/// Writes the peer's bytes, then closes; drains what we send meanwhile.
async fn feed(peer: DuplexStream, bytes: &[u8]) {
    let (mut rx, mut tx) = tokio::io::split(peer);
    let write = async {
        let _ = tx.write_all(bytes).await;
        let _ = tx.shutdown().await;
    };
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    tokio::join!(write, drain);
}

async fn read_stream(ours: DuplexStream, we_connect: bool) {
    let settings = crate::config::S2sConfig::default();
    let budget = ReadBudget::new(
        settings.max_stanza_bytes,
        Duration::from_secs(settings.stanza_timeout_secs),
    );
    let io = BufStream::new(Transport::memory(ours, budget));
    let timeouts = wire::timeouts(Duration::from_secs(5), Duration::from_secs(5));
    let header = || StreamHeader {
        from: Some("teams.fuzz.test".into()),
        to: Some("peer.fuzz.test".into()),
        id: Some("fuzz".into()),
    };
    let mut stream = if we_connect {
        let Ok(opened) = initiate_stream(io, stanza::JABBER_SERVER, header(), timeouts).await
        else {
            return;
        };
        match limits::recv_features(opened).await {
            Ok((_, stream)) => stream,
            Err(_) => return,
        }
    } else {
        let Ok(mut accepted) = accept_stream(io, stanza::JABBER_SERVER, timeouts).await else {
            return;
        };
        let _ = accepted.take_header();
        let Ok(pending) = accepted.send_header(header()).await else {
            return;
        };
        let features = wire::stream_features(Some(false), vec![wire::dialback_feature()]);
        match pending.send_features::<Received>(&features).await {
            Ok(stream) => stream,
            Err(_) => return,
        }
    };
    while let Some(read) = stream.next().await {
        match read {
            Ok(element) => {
                stream.get_stream().get_ref().reset_budget();
                element_views(element.into_element())
            }
            Err(ReadError::ParseError(e)) => {
                if let wire::ReadFailure::Error(..) = wire::classify(ReadError::ParseError(e)) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A change notification body as Graph (or anyone reaching the webhook) posts it.
pub fn webhook_body(data: &[u8]) {
    if let Some(batch) = crate::graph::webhook::parse_batch(data, b"fuzz-state") {
        for notification in batch.accepted {
            let _ = serde_json::to_string(&notification);
            let _ = (notification.chat_message(), notification.lifecycle());
        }
    }
}

/// Teams message HTML (from Graph) into XMPP text, and text back into HTML.
pub fn message_text(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let plain = text::to_text(s);
    let _ = text::to_html(&plain);
    let _ = text::to_html(s);
}

/// A configuration file (written by an administrator, still never a crash).
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::config::GatewayConfig::from_toml_str(s);
    }
}
