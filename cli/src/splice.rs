//! Byte-preserving edits of a conflist's `plugins` array.
//!
//! weft never re-serializes a primary CNI's file: it inserts its entry as text after the last
//! element of `plugins` (`,` + the whitespace that precedes that element + the entry, indented
//! alike) and removes exactly that text again. So the bytes around the entry (key order,
//! formatting, comments a parser tolerates, numbers like `1.0e3`) never change, and uninstall gives
//! back the very bytes the file had before install (or the bytes the primary CNI rewrote it with
//! since).
//!
//! The scanner runs only on text that `serde_json` already accepted, so it can be small: it
//! tracks strings (with escapes) and nesting, nothing else.

use serde_json::Value;

/// Where the elements of the top-level `plugins` array sit in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsArray {
    /// Index of `[`.
    pub open: usize,
    /// Index of `]`.
    pub close: usize,
    /// `(start, end)` of each element (end exclusive).
    pub elements: Vec<(usize, usize)>,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `i` at an opening `"`; returns the index after the closing one.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// `i` at the first byte of a value; returns the index after it.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Finds the top-level `plugins` array (the last one, as serde_json keeps the last duplicate).
pub fn find_plugins(text: &str) -> Option<PluginsArray> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return found,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(b, i)?;
        let key: String = serde_json::from_str(&text[i..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        if key == "plugins" && b[i] == b'[' {
            found = Some(elements(b, i, end)?);
        }
        i = end;
    }
}

fn elements(b: &[u8], open: usize, end: usize) -> Option<PluginsArray> {
    let close = end - 1;
    let mut out = Vec::new();
    let mut i = open + 1;
    loop {
        i = skip_ws(b, i);
        if i >= close {
            break;
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        let e = value_end(b, i)?;
        out.push((i, e));
        i = e;
    }
    Some(PluginsArray {
        open,
        close,
        elements: out,
    })
}

/// `entry` rendered the way the elements of this array are laid out: pretty and indented like
/// the last element when the array spans lines, compact otherwise. Returns the separator (what
/// goes between the last element and the entry) and the entry text.
fn layout(text: &str, arr: &PluginsArray, entry: &Value) -> (String, String) {
    let (start, _) = *arr.elements.last().expect("non-empty plugins");
    let before = arr
        .elements
        .len()
        .checked_sub(2)
        .map_or(arr.open + 1, |k| arr.elements[k].1);
    // The whitespace right before the last element (after its comma or the `[`).
    let gap = &text[before..start];
    let ws: String = gap
        .trim_start_matches(',')
        .chars()
        .rev()
        .take_while(|c| c.is_whitespace())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if let Some(nl) = ws.rfind('\n') {
        let indent = &ws[nl + 1..];
        let body = render(entry, true).replace('\n', &format!("\n{indent}"));
        (ws.clone(), body)
    } else {
        let sep = if ws.is_empty() { " ".to_string() } else { ws };
        (sep, render(entry, false))
    }
}

/// JSON text of a plugin entry with `type` first (as people write them), the other keys after
/// it in order; pretty (2 spaces) or compact.
pub fn render(entry: &Value, pretty: bool) -> String {
    let Some(obj) = entry.as_object() else {
        return entry.to_string();
    };
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "type", k.as_str()));
    let field = |k: &String| {
        let v = &obj[k.as_str()];
        let key = serde_json::to_string(k).expect("string");
        if pretty {
            let val = serde_json::to_string_pretty(v).expect("plain JSON");
            format!("  {key}: {}", val.replace('\n', "\n  "))
        } else {
            format!("{key}:{}", serde_json::to_string(v).expect("plain JSON"))
        }
    };
    let fields: Vec<String> = keys.into_iter().map(field).collect();
    if pretty {
        format!("{{\n{}\n}}", fields.join(",\n"))
    } else {
        format!("{{{}}}", fields.join(","))
    }
}

/// `text` with `entry` appended as the last element of `plugins`. `None` when there is no
/// non-empty plugins array to append to.
pub fn append(text: &str, entry: &Value) -> Option<String> {
    let arr = find_plugins(text)?;
    let (_, last_end) = *arr.elements.last()?;
    let (sep, body) = layout(text, &arr, entry);
    let mut out = String::with_capacity(text.len() + body.len() + sep.len() + 1);
    out.push_str(&text[..last_end]);
    out.push(',');
    out.push_str(&sep);
    out.push_str(&body);
    out.push_str(&text[last_end..]);
    Some(out)
}

/// `text` without the element of `plugins` at `index` (and the comma and whitespace that tie it
/// to the element before it). Removing what [`append`] added gives back the original bytes.
/// `None` for the first element (weft never inserts there) or an index out of range.
pub fn remove(text: &str, index: usize) -> Option<String> {
    let arr = find_plugins(text)?;
    if index == 0 || index >= arr.elements.len() {
        return None;
    }
    let from = arr.elements[index - 1].1;
    let to = arr.elements[index].1;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..from]);
    out.push_str(&text[to..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({"type":"kmesh-cni","capabilities":{"io.kubernetes.cri.pod-annotations":true}})
    }

    #[test]
    fn pretty_list_round_trips_byte_for_byte() {
        let text = "{\n  \"name\": \"k8s-pod-network\",\n  \"cniVersion\": \"0.3.1\",\n  \"plugins\": [\n    {\n      \"type\": \"calico\",\n      \"ipam\": {\"type\": \"calico-ipam\"}\n    },\n    {\n      \"type\": \"portmap\",\n      \"capabilities\": {\"portMappings\": true}\n    }\n  ]\n}\n";
        let added = append(text, &entry()).unwrap();
        let v: Value = serde_json::from_str(&added).unwrap();
        assert_eq!(v["plugins"][2], entry());
        assert!(
            added.contains("    },\n    {\n      \"type\": \"kmesh-cni\","),
            "{added}"
        );
        assert_eq!(remove(&added, 2).unwrap(), text);
    }

    #[test]
    fn compact_and_single_element_lists() {
        let text = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","x":"[\"]"}]}"#;
        let added = append(text, &entry()).unwrap();
        assert!(
            added.contains(r#"}, {"type":"kmesh-cni","capabilities""#),
            "{added}"
        );
        let v: Value = serde_json::from_str(&added).unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 2);
        assert_eq!(remove(&added, 1).unwrap(), text);
        assert!(remove(&added, 0).is_none());
    }

    #[test]
    fn nested_plugins_keys_are_not_the_list() {
        let text = r#"{"meta":{"plugins":[1]},"plugins":[{"type":"a"}],"z":"plugins"}"#;
        let arr = find_plugins(text).unwrap();
        assert_eq!(arr.elements.len(), 1);
        assert_eq!(
            &text[arr.elements[0].0..arr.elements[0].1],
            r#"{"type":"a"}"#
        );
    }

    #[test]
    fn no_list_no_edit() {
        assert!(append(r#"{"type":"bridge"}"#, &entry()).is_none());
        assert!(append(r#"{"plugins":[]}"#, &entry()).is_none());
        assert!(append("[1]", &entry()).is_none());
    }
}
