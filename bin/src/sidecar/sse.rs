//! Reading a runtime's `text/event-stream` answer: `event: NAME` and `data: JSON` lines,
//! one blank line ending each event (protocol §4). Chunks may split events anywhere.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `downstream`, `upstream`, `error` or `done` (`message` when the event names none).
    pub name: String,
    /// The data lines, joined with `\n`.
    pub data: String,
}

/// Turns chunks of a stream into events.
#[derive(Debug, Default)]
pub struct EventReader {
    buffer: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
}

impl EventReader {
    /// Adds a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(event) = self.finish() {
                    events.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment (keep-alive)
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {} // id, retry and unknown fields mean nothing here
            }
        }
        events
    }

    /// Whether part of an event is still waiting for its end.
    pub fn is_mid_event(&self) -> bool {
        !self.buffer.is_empty() || self.name.is_some() || self.data.is_some()
    }

    fn finish(&mut self) -> Option<Event> {
        let name = self.name.take();
        let data = self.data.take();
        if name.is_none() && data.is_none() {
            return None;
        }
        Some(Event {
            name: name.unwrap_or_else(|| "message".to_owned()),
            data: data.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let stream = b"event: downstream\ndata: {\"payload\": 1}\n\n: keep-alive\n\nevent: upstream\r\ndata: {\"p\": 0.5}\r\n\r\nevent: done\ndata: {}\n\n";
        for cut in 1..stream.len() {
            let mut reader = EventReader::default();
            let mut got = reader.push(&stream[..cut]);
            got.extend(reader.push(&stream[cut..]));
            assert_eq!(
                got,
                vec![
                    event("downstream", "{\"payload\": 1}"),
                    event("upstream", "{\"p\": 0.5}"),
                    event("done", "{}"),
                ],
                "cut at {cut}"
            );
            assert!(!reader.is_mid_event());
        }
    }

    #[test]
    fn an_unfinished_event_is_noticed() {
        let mut reader = EventReader::default();
        assert!(reader.push(b"event: downstream\ndata: {").is_empty());
        assert!(reader.is_mid_event());
    }

    #[test]
    fn data_lines_join_and_names_default() {
        let mut reader = EventReader::default();
        assert_eq!(
            reader.push(b"data: a\ndata: b\n\n"),
            vec![event("message", "a\nb")]
        );
    }
}
