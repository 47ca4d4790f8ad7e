//! What a backend answers, independent of which backend: samples with their labels, and the
//! shapes of listed series. Labels are kept in a compact form (one allocation per sample, shared
//! blocks for a whole answer) because an answer may hold a million samples.

use std::{collections::BTreeMap, fmt, sync::Arc};

/// Label sets are written into shared blocks of this size: an answer's labels are a few large
/// allocations that go back to the system when the answer is dropped, not a million small ones
/// that stay in the allocator's arenas.
const BLOCK: usize = 1 << 20;

/// The labels of one sample, sorted by name: a count, the end offset of every name and value,
/// then the text, in a block shared with other samples of the same answer. A
/// `BTreeMap<String, String>` costs about ten times the label text; this costs the text, eight
/// bytes a label and 24 bytes a sample.
#[derive(Clone)]
pub struct Labels {
    pub(in crate::backend) block: Arc<[u8]>,
    start: u32,
    end: u32,
}

impl Labels {
    fn bytes(&self) -> &[u8] {
        self.block
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        read_u32(self.bytes(), 0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every label as (name, value), sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let bytes = self.bytes();
        let count = self.len();
        let text = bytes.get(4 + 8 * count..).unwrap_or_default();
        let mut start = 0;
        (0..count).map(move |i| {
            let name_end = read_u32(bytes, 4 + 8 * i);
            let value_end = read_u32(bytes, 8 + 8 * i);
            let name = utf8(text.get(start..name_end));
            let value = utf8(text.get(name_end..value_end));
            start = value_end;
            (name, value)
        })
    }

    /// The labels as a map, for answers that list them.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
    }
}

impl Default for Labels {
    fn default() -> Self {
        std::iter::empty::<(&str, &str)>().collect()
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Labels {}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut builder = LabelsBuilder::default();
        for (name, value) in pairs {
            builder.push_name(name.as_ref());
            builder.push_value(value.as_ref());
        }
        let mut block = Vec::new();
        let (start, end) = builder.write_to(&mut block);
        Labels {
            block: Arc::from(block),
            start,
            end,
        }
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize)
}

fn utf8(bytes: Option<&[u8]>) -> &str {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or_default()
}

/// u32 offsets: label sets and blocks are far below 4 GiB; a larger one saturates and reads empty.
fn offset(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Collects one label set at a time into reused buffers; `write_to` appends the compact form.
#[derive(Default)]
pub(in crate::backend) struct LabelsBuilder {
    text: String,
    /// (name start, name end, value end) in `text`.
    spans: Vec<(usize, usize, usize)>,
}

impl LabelsBuilder {
    pub(in crate::backend) fn push_name(&mut self, name: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        self.spans.push((start, self.text.len(), self.text.len()));
    }

    pub(in crate::backend) fn push_value(&mut self, value: &str) {
        self.text.push_str(value);
        if let Some(span) = self.spans.last_mut() {
            span.2 = self.text.len();
        }
    }

    pub(in crate::backend) fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
    }

    /// The size of the compact form.
    fn encoded_len(&self) -> usize {
        4 + 8 * self.spans.len() + self.text.len()
    }

    /// Appends the label set, sorted by name, to `block`; returns where it lies; clears.
    fn write_to(&mut self, block: &mut Vec<u8>) -> (u32, u32) {
        let begin = block.len();
        let text = &self.text;
        self.spans.sort_by(|a, b| text[a.0..a.1].cmp(&text[b.0..b.1]));
        block.extend_from_slice(&offset(self.spans.len()).to_le_bytes());
        let mut end = 0;
        for (start, name_end, value_end) in &self.spans {
            end += name_end - start;
            block.extend_from_slice(&offset(end).to_le_bytes());
            end += value_end - name_end;
            block.extend_from_slice(&offset(end).to_le_bytes());
        }
        for (start, _, value_end) in &self.spans {
            block.extend_from_slice(&self.text.as_bytes()[*start..*value_end]);
        }
        self.clear();
        (offset(begin), offset(block.len()))
    }
}

/// Samples as they are decoded: label sets go into the current block; samples wait in `pending`
/// until their block is full and shared, then join `samples`.
#[derive(Default)]
pub(in crate::backend) struct Arena {
    pub(in crate::backend) builder: LabelsBuilder,
    block: Vec<u8>,
    pending: Vec<(u32, u32, f64, f64)>,
    samples: Vec<Sample>,
}

impl Arena {
    /// Adds a sample with the label set in `self.builder`.
    pub(in crate::backend) fn add(&mut self, timestamp: f64, value: f64) {
        let size = self.builder.encoded_len();
        if self.block.len() + size > self.block.capacity() {
            self.seal();
            self.block.reserve_exact(BLOCK.max(size));
        }
        let (start, end) = self.builder.write_to(&mut self.block);
        self.pending.push((start, end, timestamp, value));
    }

    /// Shares the current block with its samples.
    fn seal(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let block: Arc<[u8]> = Arc::from(std::mem::take(&mut self.block));
        self.samples.extend(
            self.pending
                .drain(..)
                .map(|(start, end, timestamp, value)| Sample {
                    labels: Labels {
                        block: block.clone(),
                        start,
                        end,
                    },
                    timestamp,
                    value,
                }),
        );
    }

    pub(in crate::backend) fn finish(mut self) -> Vec<Sample> {
        self.seal();
        self.samples
    }
}

/// One sample of an instant vector (or the value of a scalar, without labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    /// Seconds since the Unix epoch, as Prometheus reports it (millisecond precision).
    pub timestamp: f64,
    pub value: f64,
}

/// The distinct shapes (series name and label names) of a series listing. Label values are never
/// kept: naming and resource association need only names, and prometheus-adapter's habit of
/// holding every label set is what makes its memory grow with the number of series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesList {
    pub shapes: Vec<SeriesShape>,
    /// How many series Prometheus listed.
    pub series: usize,
}

/// A series name and its label names (sorted, without `__name__`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesShape {
    pub name: String,
    pub labels: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_compact_and_round_trip() {
        let labels: Labels = [("pod", "p-1"), ("namespace", "default"), ("", "")]
            .into_iter()
            .collect();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels.get("namespace"), Some("default"));
        assert_eq!(labels.get(""), Some(""));
        assert_eq!(
            format!("{labels:?}"),
            r#"{"": "", "namespace": "default", "pod": "p-1"}"#
        );
        // Header, offsets and text: no per-label allocation.
        assert_eq!(labels.bytes().len(), 4 + 3 * 8 + "namespacedefaultpodp-1".len());
        assert!(Labels::default().is_empty());
        assert_eq!(Labels::default(), Labels::default());
    }
}
