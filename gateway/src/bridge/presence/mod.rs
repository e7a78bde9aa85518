//! Presence both ways (the table in docs: Teams availability and activity to
//! XMPP `<show/>` and `<status/>`; XMPP to the pairs Graph's setPresence takes).
//! The mapping is here and pure; `teams` carries Teams presence to XMPP,
//! `contact` a contact's XMPP presence to Teams.

pub mod contact;
pub mod teams;

use xmpp_parsers::presence::{Presence, Show, Type};

/// What a Teams user's presence means to XMPP.
#[derive(Debug, Clone, PartialEq)]
pub struct XmppPresence {
    pub available: bool,
    pub show: Option<Show>,
    /// The activity and the Teams status message, for `<status/>`.
    pub status: Option<String>,
}

/// How out-of-office shows (configurable): extended away, or unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutOfOffice {
    #[default]
    ExtendedAway,
    Unavailable,
}

fn words(activity: &str) -> String {
    // InAMeeting → "In a meeting"
    let mut out = String::new();
    for (i, c) in activity.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Teams → XMPP. Available is plain available; Away, BeRightBack and
/// AvailableIdle are `away`; Busy, BusyIdle and DoNotDisturb (with their
/// activities) are `dnd`; OffWork is `xa`; Offline and PresenceUnknown are
/// unavailable; out of office as configured. Never `chat`.
pub fn to_xmpp(
    availability: &str,
    activity: &str,
    status_message: Option<&str>,
    out_of_office: bool,
    ooo: OutOfOffice,
) -> XmppPresence {
    let show = match availability {
        "Available" => Some(None),
        "Away" | "BeRightBack" | "AvailableIdle" => Some(Some(Show::Away)),
        "Busy" | "BusyIdle" | "DoNotDisturb" => Some(Some(Show::Dnd)),
        "OffWork" => Some(Some(Show::Xa)),
        _ => None,
    };
    let activity = if activity.is_empty() || activity == availability {
        None
    } else {
        Some(words(activity))
    };
    let text = match (activity, status_message.filter(|m| !m.trim().is_empty())) {
        (Some(a), Some(m)) => Some(format!("{a}: {m}")),
        (Some(a), None) => Some(a),
        (None, Some(m)) => Some(m.to_owned()),
        (None, None) => None,
    };
    let (available, show) = match (show, out_of_office, ooo) {
        (_, true, OutOfOffice::Unavailable) | (None, _, _) => (false, None),
        (Some(_), true, OutOfOffice::ExtendedAway) => (true, Some(Show::Xa)),
        (Some(show), false, _) => (true, show),
    };
    let status = if out_of_office {
        Some(text.map_or_else(
            || "Out of office".to_owned(),
            |t| format!("Out of office — {t}"),
        ))
    } else {
        text
    };
    XmppPresence {
        available,
        show,
        status,
    }
}

/// The presence stanza (from our user's fixed resource) for a remote contact.
pub fn stanza(p: &XmppPresence) -> Presence {
    let mut presence = Presence::new(if p.available {
        Type::None
    } else {
        Type::Unavailable
    });
    presence.show = p.show.clone();
    if let Some(status) = &p.status {
        presence.set_status("", status.clone());
    }
    presence
}

/// What XMPP presence becomes in Teams: a setPresence pair, or nothing (clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamsPresence {
    Set {
        availability: &'static str,
        activity: &'static str,
    },
    Clear,
}

/// XMPP → Teams, limited to the pairs setPresence accepts (Available/Available,
/// Busy/InACall, Busy/InAConferenceCall, Away/Away, DoNotDisturb/Presenting).
pub fn to_teams(presence: &Presence) -> TeamsPresence {
    if presence.type_ == Type::Unavailable {
        return TeamsPresence::Clear;
    }
    match presence.show {
        None | Some(Show::Chat) => TeamsPresence::Set {
            availability: "Available",
            activity: "Available",
        },
        Some(Show::Away) | Some(Show::Xa) => TeamsPresence::Set {
            availability: "Away",
            activity: "Away",
        },
        Some(Show::Dnd) => TeamsPresence::Set {
            availability: "DoNotDisturb",
            activity: "Presenting",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_teams_to_xmpp() {
        let p = |a: &str, act: &str| to_xmpp(a, act, None, false, OutOfOffice::default());
        assert_eq!(
            p("Available", "Available"),
            XmppPresence {
                available: true,
                show: None,
                status: None
            }
        );
        assert_eq!(p("Away", "Away").show, Some(Show::Away));
        assert_eq!(p("BeRightBack", "BeRightBack").show, Some(Show::Away));
        assert_eq!(p("AvailableIdle", "Available").show, Some(Show::Away));
        let meeting = p("Busy", "InAMeeting");
        assert_eq!(
            (meeting.show, meeting.status.as_deref()),
            (Some(Show::Dnd), Some("In a meeting"))
        );
        assert_eq!(p("DoNotDisturb", "Presenting").show, Some(Show::Dnd));
        assert_eq!(p("OffWork", "OffWork").show, Some(Show::Xa));
        assert!(!p("Offline", "Offline").available);
        assert!(!p("PresenceUnknown", "PresenceUnknown").available);
        for availability in [
            "Available",
            "Away",
            "Busy",
            "DoNotDisturb",
            "OffWork",
            "BeRightBack",
        ] {
            assert_ne!(
                p(availability, availability).show,
                Some(Show::Chat),
                "never chat"
            );
        }
    }

    #[test]
    fn status_messages_and_out_of_office() {
        let p = to_xmpp(
            "Busy",
            "InACall",
            Some("Back at 3"),
            false,
            OutOfOffice::ExtendedAway,
        );
        assert_eq!(p.status.as_deref(), Some("In a call: Back at 3"));
        let ooo = to_xmpp(
            "Available",
            "Available",
            Some("On leave"),
            true,
            OutOfOffice::ExtendedAway,
        );
        assert_eq!(
            (ooo.show, ooo.status.as_deref()),
            (Some(Show::Xa), Some("Out of office — On leave"))
        );
        let gone = to_xmpp(
            "Available",
            "Available",
            None,
            true,
            OutOfOffice::Unavailable,
        );
        assert!(!gone.available);
        let stanza = stanza(&to_xmpp(
            "Busy",
            "InAMeeting",
            None,
            false,
            OutOfOffice::default(),
        ));
        assert_eq!(stanza.show, Some(Show::Dnd));
        assert_eq!(
            stanza.statuses.values().next().map(String::as_str),
            Some("In a meeting")
        );
    }

    #[test]
    fn xmpp_to_the_pairs_graph_accepts() {
        let with = |show: Option<Show>| {
            let mut p = Presence::available();
            p.show = show;
            to_teams(&p)
        };
        assert_eq!(
            with(None),
            TeamsPresence::Set {
                availability: "Available",
                activity: "Available"
            }
        );
        assert_eq!(
            with(Some(Show::Chat)),
            TeamsPresence::Set {
                availability: "Available",
                activity: "Available"
            }
        );
        assert_eq!(
            with(Some(Show::Xa)),
            TeamsPresence::Set {
                availability: "Away",
                activity: "Away"
            }
        );
        assert_eq!(
            with(Some(Show::Dnd)),
            TeamsPresence::Set {
                availability: "DoNotDisturb",
                activity: "Presenting"
            }
        );
        assert_eq!(to_teams(&Presence::unavailable()), TeamsPresence::Clear);
    }
}
