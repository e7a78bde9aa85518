//! Message bodies across the bridge: XMPP plain text becomes safe HTML for
//! Teams (escaped, line breaks kept), and Teams HTML becomes readable plain
//! text for XMPP (block ends and `<br>` as line breaks, links with their
//! address, entities decoded, everything else dropped).

/// Plain text → HTML that renders as the same text.
pub fn to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let normalized = text.replace("\r\n", "\n");
    for (i, line) in normalized.split('\n').enumerate() {
        if i > 0 {
            out.push_str("<br>");
        }
        for c in line.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
    }
    out
}

/// Tags after which a line ends.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
];

/// Teams HTML → plain text.
pub fn to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    // The address of the link being read, shown after its text if it differs.
    let mut link: Option<String> = None;
    let mut link_text = String::new();
    while let Some(start) = rest.find('<') {
        push_text(
            &rest[..start],
            &mut out,
            link.is_some().then_some(&mut link_text),
        );
        let Some(end) = rest[start..].find('>') else {
            // A stray '<': text, not a tag.
            push_text(
                &rest[start..],
                &mut out,
                link.is_some().then_some(&mut link_text),
            );
            rest = "";
            break;
        };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match (name.as_str(), closing) {
            ("br", _) => out.push('\n'),
            ("a", false) => {
                link = attribute(tag, "href");
                link_text.clear();
            }
            ("a", true) => {
                if let Some(href) = link.take()
                    && href != link_text.trim()
                    && !href.is_empty()
                {
                    out.push_str(&format!(" ({href})"));
                }
            }
            ("img", _) => out.push_str(&attribute(tag, "alt").unwrap_or_else(|| "[image]".into())),
            // Teams writes emoji as `<emoji alt="😀" …></emoji>`.
            ("emoji", false) => out.push_str(&attribute(tag, "alt").unwrap_or_default()),
            (n, true) if BLOCKS.contains(&n) && !out.ends_with('\n') && !out.is_empty() => {
                out.push('\n');
            }
            _ => {}
        }
    }
    push_text(rest, &mut out, None);
    out.trim_end_matches('\n').trim().to_owned()
}

fn push_text(raw: &str, out: &mut String, link_text: Option<&mut String>) {
    let decoded = decode_entities(raw);
    if let Some(t) = link_text {
        t.push_str(&decoded);
    }
    out.push_str(&decoded);
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find(&format!("{name}="))? + name.len() + 1;
    let value = &tag[at..];
    let (quote, body) = match value.chars().next()? {
        q @ ('"' | '\'') => (q, &value[1..]),
        _ => (' ', value),
    };
    let end = body.find(quote).unwrap_or(body.len());
    Some(decode_entities(&body[..end]))
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // Entities are short; a ';' is ASCII, so the byte index is a char boundary.
        let Some(semi) = rest.as_bytes()[..rest.len().min(12)]
            .iter()
            .position(|&b| b == b';')
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_becomes_safe_html() {
        assert_eq!(
            to_html("a < b & \"c\"\nsecond <script>line</script>"),
            "a &lt; b &amp; &quot;c&quot;<br>second &lt;script&gt;line&lt;/script&gt;"
        );
        assert_eq!(to_html("x\r\ny"), "x<br>y");
    }

    #[test]
    fn html_becomes_readable_text() {
        assert_eq!(
            to_text("<p>Hello <b>Bob</b></p><p>second&nbsp;line</p>"),
            "Hello Bob\nsecond line"
        );
        assert_eq!(to_text("one<br>two<br/>three"), "one\ntwo\nthree");
        assert_eq!(
            to_text("see <a href=\"https://example.org/x?a=1&amp;b=2\">the doc</a>"),
            "see the doc (https://example.org/x?a=1&b=2)"
        );
        assert_eq!(
            to_text("<a href='https://e.org'>https://e.org</a>"),
            "https://e.org"
        );
        assert_eq!(
            to_text("5 &lt; 6 &amp;&amp; 7 &gt; 3 &#128512; &#x41;"),
            "5 < 6 && 7 > 3 😀 A"
        );
        assert_eq!(to_text("a < b"), "a < b");
        assert_eq!(
            to_text(
                "<p>ok <emoji id=\"1f600_grinning\" alt=\"😀\" title=\"Grinning\"></emoji></p>"
            ),
            "ok 😀"
        );
        assert_eq!(to_text("AT&T"), "AT&T");
        assert_eq!(
            to_text(&to_html("a < b & c\nd")),
            "a < b & c\nd",
            "round trip"
        );
    }
}
