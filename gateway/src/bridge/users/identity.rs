//! Teams users as JIDs of our domain: the local part comes from a rule (the
//! UPN's local part by default, or the mail address's, or another
//! attribute), is case-folded and escaped per XEP-0106. Two users that would
//! get the same JID are reported and neither gets it: never silently merged.

use std::collections::BTreeMap;

use crate::graph::api::User;

/// Where a Teams user's JID local part comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalPartRule {
    /// `alice.smith@contoso.com` → `alice.smith`.
    #[default]
    UpnLocalPart,
    /// The local part of `mail`.
    MailLocalPart,
    /// The whole UPN, escaped (`alice\40contoso.com`): unique by construction.
    WholeUpn,
}

/// XEP-0106: the characters a JID local part cannot hold, as `\xx`.
const ESCAPES: &[(char, &str)] = &[
    (' ', "\\20"),
    ('"', "\\22"),
    ('&', "\\26"),
    ('\'', "\\27"),
    ('/', "\\2f"),
    (':', "\\3a"),
    ('<', "\\3c"),
    ('>', "\\3e"),
    ('@', "\\40"),
    ('\\', "\\5c"),
];

/// Escapes a local part per XEP-0106. A backslash is escaped only where it
/// would otherwise read as an escape sequence (§4.2).
pub fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let chars: Vec<char> = raw.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '\\' {
            let next: String = chars[i + 1..].iter().take(2).collect();
            if ESCAPES.iter().any(|(_, e)| e[1..] == next) {
                out.push_str("\\5c");
            } else {
                out.push('\\');
            }
        } else if let Some((_, e)) = ESCAPES.iter().find(|(ch, _)| ch == c) {
            out.push_str(e);
        } else {
            out.push(*c);
        }
    }
    out
}

/// The inverse of [`escape`].
pub fn unescape(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let seq = rest.get(i..i + 3).unwrap_or("");
        match ESCAPES.iter().find(|(_, e)| seq.eq_ignore_ascii_case(e)) {
            Some((c, _)) => {
                out.push(*c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The JID local part a rule gives a user, case-folded and escaped.
pub fn local_part(user: &User, rule: &LocalPartRule) -> Option<String> {
    let source = match rule {
        LocalPartRule::UpnLocalPart => user
            .user_principal_name
            .as_deref()?
            .split('@')
            .next()?
            .to_owned(),
        LocalPartRule::MailLocalPart => user.mail.as_deref()?.split('@').next()?.to_owned(),
        LocalPartRule::WholeUpn => user.user_principal_name.clone()?,
    };
    let folded = source.trim().to_lowercase();
    (!folded.is_empty()).then(|| escape(&folded))
}

/// Who is who, and what clashed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityMap {
    /// JID local part → the user's object id.
    pub by_local: BTreeMap<String, String>,
    /// Local parts more than one user would get, with their UPNs: none of them is mapped.
    pub collisions: BTreeMap<String, Vec<String>>,
    /// Users the rule gives no local part (e.g. no mail address).
    pub unmapped: Vec<String>,
}

impl IdentityMap {
    pub fn build(users: &[User], rule: &LocalPartRule) -> Self {
        let mut claims: BTreeMap<String, Vec<&User>> = BTreeMap::new();
        let mut map = IdentityMap::default();
        for user in users {
            match local_part(user, rule) {
                Some(local) => claims.entry(local).or_default().push(user),
                None => map.unmapped.push(
                    user.user_principal_name
                        .clone()
                        .unwrap_or_else(|| user.id.clone()),
                ),
            }
        }
        for (local, users) in claims {
            if let [only] = users.as_slice() {
                map.by_local.insert(local, only.id.clone());
            } else {
                let upns = users
                    .iter()
                    .map(|u| {
                        u.user_principal_name
                            .clone()
                            .unwrap_or_else(|| u.id.clone())
                    })
                    .collect();
                tracing::warn!(local = %local, users = ?upns, "JID collision: none of these users is mapped");
                map.collisions.insert(local, upns);
            }
        }
        map
    }

    /// The object id behind a local part (case-insensitive).
    pub fn user_for(&self, local: &str) -> Option<&str> {
        self.by_local.get(&local.to_lowercase()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, upn: &str, mail: Option<&str>) -> User {
        User {
            id: id.into(),
            user_principal_name: Some(upn.into()),
            mail: mail.map(str::to_owned),
            ..User::default()
        }
    }

    #[test]
    fn xep_0106_examples() {
        // XEP-0106 §5 (examples of transformation).
        assert_eq!(escape("space cadet"), "space\\20cadet");
        assert_eq!(
            escape("call me \"ishmael\""),
            "call\\20me\\20\\22ishmael\\22"
        );
        assert_eq!(escape("at&t guy"), "at\\26t\\20guy");
        assert_eq!(escape("d'artagnan"), "d\\27artagnan");
        assert_eq!(escape("/.fanboy"), "\\2f.fanboy");
        assert_eq!(escape("::foo::"), "\\3a\\3afoo\\3a\\3a");
        assert_eq!(escape("<foo>"), "\\3cfoo\\3e");
        assert_eq!(escape("user@host"), "user\\40host");
        assert_eq!(escape("c:\\net"), "c\\3a\\net");
        assert_eq!(escape("c:\\\\net"), "c\\3a\\\\net");
        assert_eq!(escape("c:\\cool stuff"), "c\\3a\\cool\\20stuff");
        assert_eq!(escape("c:\\5commas"), "c\\3a\\5c5commas");
        for raw in ["space cadet", "c:\\5commas", "user@host", "a\\b"] {
            assert_eq!(unescape(&escape(raw)), raw);
        }
    }

    #[test]
    fn rules_fold_case_and_collisions_are_reported() {
        let users = vec![
            user("1", "Alice.Smith@contoso.com", Some("alice@contoso.com")),
            user("2", "bob@contoso.com", None),
            user("3", "BOB@fabrikam.com", Some("robert@fabrikam.com")),
        ];
        let map = IdentityMap::build(&users, &LocalPartRule::UpnLocalPart);
        assert_eq!(map.user_for("alice.smith"), Some("1"));
        assert_eq!(map.user_for("ALICE.SMITH"), Some("1"));
        assert_eq!(
            map.user_for("bob"),
            None,
            "two users would be bob@: neither is"
        );
        assert_eq!(
            map.collisions["bob"],
            ["bob@contoso.com", "BOB@fabrikam.com"]
        );

        let by_mail = IdentityMap::build(&users, &LocalPartRule::MailLocalPart);
        assert_eq!(
            (by_mail.user_for("alice"), by_mail.user_for("robert")),
            (Some("1"), Some("3"))
        );
        assert_eq!(by_mail.unmapped, ["bob@contoso.com"]);

        let whole = IdentityMap::build(&users, &LocalPartRule::WholeUpn);
        assert_eq!(whole.user_for("bob\\40contoso.com"), Some("2"));
        assert!(whole.collisions.is_empty());
    }
}
