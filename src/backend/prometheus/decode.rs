//! Prometheus answers decoded while they arrive: a blocking `serde_json` reader fed by body chunks,
//! so memory holds a few chunks of the body and what is kept of it, never the whole body and its
//! decoded copy at once. Samples go straight into the compact form of [`crate::backend::Labels`].

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use crate::backend::samples::{Arena, Labels, LabelsBuilder, Sample, SeriesList, SeriesShape};

/// How much of a body is kept for the log when it turns out not to be the API's JSON.
const HEAD_BYTES: usize = 512;

/// Prometheus writes sample values as strings, including `NaN`, `+Inf` and `-Inf`.
fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

/// Prometheus' answer envelope.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Envelope<T> {
    pub status: String,
    pub data: Option<T>,
    pub error_type: Option<String>,
    pub error: Option<String>,
}

/// The `data` of an instant query.
#[derive(Debug)]
pub(super) enum QueryData {
    Vector(Vec<Sample>),
    Scalar(Sample),
    /// A result type the adapter cannot serve (`matrix`, `string`); its content is skipped.
    Other(String),
}

/// What `result` held, decided by its shape, so the order of `resultType` and `result` in the
/// answer does not matter and nothing is buffered.
enum RawResult {
    Samples(Vec<Sample>),
    Pair(f64, f64),
    /// Range vectors or strings: skipped.
    Skipped,
}

impl<'de> Deserialize<'de> for QueryData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = QueryData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a query result")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<QueryData, A::Error> {
                #[derive(Deserialize)]
                #[serde(field_identifier, rename_all = "camelCase")]
                enum Key {
                    ResultType,
                    Result,
                    #[serde(other)]
                    Other,
                }
                let mut kind: Option<String> = None;
                let mut result = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::ResultType => kind = Some(map.next_value()?),
                        Key::Result => {
                            let skip = kind.as_deref().is_some_and(|k| k != "vector" && k != "scalar");
                            result = Some(map.next_value_seed(ResultSeed { skip })?);
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| serde::de::Error::missing_field("resultType"))?;
                Ok(match (kind.as_str(), result) {
                    ("vector", Some(RawResult::Samples(samples))) => QueryData::Vector(samples),
                    ("vector", None) => QueryData::Vector(Vec::new()),
                    ("scalar", Some(RawResult::Pair(timestamp, value))) => QueryData::Scalar(Sample {
                        labels: Labels::default(),
                        timestamp,
                        value,
                    }),
                    ("vector" | "scalar", _) => {
                        return Err(serde::de::Error::custom(format!(
                            "a {kind} result of another shape"
                        )));
                    }
                    _ => QueryData::Other(kind),
                })
            }
        }
        deserializer.deserialize_map(DataVisitor)
    }
}

/// `result`: a list of samples (vector), a `[time, "value"]` pair (scalar), or skipped.
struct ResultSeed {
    skip: bool,
}

impl<'de> DeserializeSeed<'de> for ResultSeed {
    type Value = RawResult;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<RawResult, D::Error> {
        if self.skip {
            IgnoredAny::deserialize(deserializer)?;
            return Ok(RawResult::Skipped);
        }
        deserializer.deserialize_seq(ResultVisitor)
    }
}

struct ResultVisitor;

impl<'de> Visitor<'de> for ResultVisitor {
    type Value = RawResult;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of samples or a [time, value] pair")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawResult, A::Error> {
        let mut arena = Arena::default();
        let first = seq.next_element_seed(FirstSeed { arena: &mut arena })?;
        match first {
            None => return Ok(RawResult::Samples(Vec::new())),
            Some(First::Time(time)) => {
                let Value(value) = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(1, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(RawResult::Pair(time, value));
            }
            Some(First::Sample) => {}
        }
        while seq.next_element_seed(SampleSeed { arena: &mut arena })?.is_some() {}
        Ok(RawResult::Samples(arena.finish()))
    }
}

/// The first element of `result` tells a vector (an object) from a scalar (a number).
enum First {
    Time(f64),
    /// A sample, now in the arena.
    Sample,
}

struct FirstSeed<'b> {
    arena: &'b mut Arena,
}

impl<'de> DeserializeSeed<'de> for FirstSeed<'_> {
    type Value = First;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<First, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstSeed<'_> {
    type Value = First;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sample or a time")
    }
    fn visit_f64<E>(self, v: f64) -> Result<First, E> {
        Ok(First::Time(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<First, E> {
        Ok(First::Time(v as f64))
    }
    fn visit_i64<E>(self, v: i64) -> Result<First, E> {
        Ok(First::Time(v as f64))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<First, A::Error> {
        SampleSeed { arena: self.arena }
            .visit_map(map)
            .map(|()| First::Sample)
    }
}

/// One element of a vector: `{"metric": {...}, "value": [time, "value"]}`. A native histogram
/// sample (`histogram` instead of `value`) has no single value and reads as NaN, which the
/// handlers report as not a number; a range-vector series (`values`) is skipped.
struct SampleSeed<'b> {
    arena: &'b mut Arena,
}

impl<'de> DeserializeSeed<'de> for SampleSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SampleSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sample")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Key {
            Metric,
            Value,
            Values,
            #[serde(other)]
            Other,
        }
        let mut pair = (0.0, f64::NAN);
        let mut range = false;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Metric => {
                    map.next_value_seed(LabelSetSeed {
                        builder: &mut self.arena.builder,
                    })?;
                }
                Key::Value => {
                    let (time, Value(value)) = map.next_value::<(f64, Value)>()?;
                    pair = (time, value);
                }
                Key::Values => {
                    range = true;
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match range {
            true => self.arena.builder.clear(),
            false => self.arena.add(pair.0, pair.1),
        }
        Ok(())
    }
}

/// A sample value string, parsed without keeping the string.
struct Value(f64);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sample value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value(parse_value(v)))
            }
        }
        deserializer.deserialize_str(ValueVisitor)
    }
}

/// `metric`: label names and values appended to the builder straight from the reader's buffer.
struct LabelSetSeed<'b> {
    builder: &'b mut LabelsBuilder,
}

impl<'de> DeserializeSeed<'de> for LabelSetSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LabelSetSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label set")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_key_seed(Append {
                builder: &mut *self.builder,
                name: true,
            })?
            .is_some()
        {
            map.next_value_seed(Append {
                builder: &mut *self.builder,
                name: false,
            })?;
        }
        Ok(())
    }
}

/// Appends one label name or value to the builder.
struct Append<'b> {
    builder: &'b mut LabelsBuilder,
    name: bool,
}

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label name or value")
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        if self.name {
            self.builder.push_name(v);
        } else {
            self.builder.push_value(v);
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for SeriesList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = SeriesList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of label sets")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeriesList, A::Error> {
                // Shapes by hash; most series repeat a shape already seen, so only new ones allocate.
                let mut known: std::collections::HashMap<u64, Vec<SeriesShape>> = Default::default();
                let mut series = 0;
                while let Some(shape) = seq.next_element::<Option<BorrowedShape<'de>>>()? {
                    series += 1;
                    let Some(shape) = shape else { continue };
                    let bucket = known.entry(shape.hash()).or_default();
                    if !bucket.iter().any(|k| shape.is(k)) {
                        bucket.push(shape.to_owned());
                    }
                }
                let mut shapes: Vec<SeriesShape> = known.into_values().flatten().collect();
                shapes.sort();
                Ok(SeriesList { shapes, series })
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// A string that borrows from the input unless it had escapes (serde's own `Cow` always copies).
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// One label set of a listing, borrowing from the response body where it can.
struct BorrowedShape<'de> {
    name: Cow<'de, str>,
    labels: Vec<Cow<'de, str>>,
}

impl BorrowedShape<'_> {
    fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut hasher);
        self.labels.hash(&mut hasher);
        hasher.finish()
    }

    fn is(&self, known: &SeriesShape) -> bool {
        known.name == self.name
            && known.labels.len() == self.labels.len()
            && known.labels.iter().zip(&self.labels).all(|(a, b)| a == b)
    }

    fn to_owned(&self) -> SeriesShape {
        SeriesShape {
            name: self.name.to_string(),
            labels: self.labels.iter().map(|l| l.to_string()).collect(),
        }
    }
}

impl<'de> Deserialize<'de> for BorrowedShape<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = BorrowedShape<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label set")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut name = Cow::Borrowed("");
                let mut labels = Vec::new();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    if key == "__name__" {
                        name = map.next_value::<Text<'de>>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        labels.push(key);
                    }
                }
                labels.sort();
                Ok(BorrowedShape { name, labels })
            }
        }
        deserializer.deserialize_map(ShapeVisitor)
    }
}

/// Why a streamed body did not decode.
#[derive(Debug)]
pub(super) enum StreamError {
    /// Reading the body failed (connection lost, timeout).
    Transport(reqwest::Error),
    /// The body grew past the limit; reading stopped there.
    TooLarge,
    /// The body is not the expected JSON.
    Malformed,
    /// The decoder thread did not finish (it panicked or the runtime is shutting down).
    Decoder(String),
}

/// A decoded body, or why not, with the body's first bytes for the log.
pub(super) struct Streamed<T> {
    pub result: Result<T, StreamError>,
    pub head: Vec<u8>,
}

/// Decodes `response`'s body as `T` while it arrives, on a blocking thread fed through a small
/// channel, counting bytes: past `limit` reading stops and the connection is dropped.
pub(super) async fn decode<T>(mut response: reqwest::Response, limit: u64) -> Streamed<T>
where
    T: for<'de> Deserialize<'de> + Send + 'static,
{
    let (chunks, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let decoder = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(
            64 * 1024,
            ChunkReader {
                receiver,
                current: bytes::Bytes::new(),
            },
        );
        serde_json::from_reader::<_, T>(reader)
    });
    let mut head = Vec::new();
    let mut received: u64 = 0;
    let mut outcome = Ok(());
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                received = received.saturating_add(chunk.len() as u64);
                if received > limit {
                    outcome = Err(StreamError::TooLarge);
                    break;
                }
                if head.len() < HEAD_BYTES {
                    head.extend_from_slice(&chunk[..chunk.len().min(HEAD_BYTES - head.len())]);
                }
                // The decoder stops reading on malformed input; its error is reported below.
                if chunks.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                outcome = Err(StreamError::Transport(err));
                break;
            }
        }
    }
    // Dropping the sender ends the decoder's input; dropping the response closes the connection.
    drop(chunks);
    drop(response);
    let decoded = decoder.await;
    let result = match (outcome, decoded) {
        (Err(err), _) => Err(err),
        (Ok(()), Err(err)) => Err(StreamError::Decoder(err.to_string())),
        (Ok(()), Ok(Err(_))) => Err(StreamError::Malformed),
        (Ok(()), Ok(Ok(value))) => Ok(value),
    };
    Streamed { result, head }
}

/// Feeds body chunks from the async side to a blocking JSON decoder.
struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(body: &str) -> QueryData {
        let envelope: Envelope<QueryData> = serde_json::from_reader(body.as_bytes()).unwrap();
        envelope.data.unwrap()
    }

    #[test]
    fn decodes_vector_and_special_values() {
        let QueryData::Vector(samples) = data(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a","namespace":"x"},"value":[1700000000.123,"1.5"]},
            {"metric":{"pod":"b"},"value":[1700000000.123,"NaN"]},
            {"metric":{},"value":[1700000000,"+Inf"]}]}}"#,
        ) else {
            panic!("vector expected")
        };
        assert_eq!(samples[0].value, 1.5);
        assert_eq!(samples[0].timestamp, 1_700_000_000.123);
        assert_eq!(samples[0].labels.get("pod"), Some("a"));
        assert_eq!(samples[0].labels.get("namespace"), Some("x"));
        assert_eq!(samples[0].labels.get("node"), None);
        assert_eq!(
            samples[0].labels.iter().collect::<Vec<_>>(),
            [("namespace", "x"), ("pod", "a")],
            "sorted by name"
        );
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[2].value, f64::INFINITY);
        assert!(samples[2].labels.is_empty());
    }

    #[test]
    fn result_before_result_type_and_other_shapes() {
        let QueryData::Vector(samples) = data(
            r#"{"data":{"result":[{"value":[1,"2"],"metric":{"a":"é\"x"}}],"resultType":"vector"},"status":"success"}"#,
        ) else {
            panic!("vector expected")
        };
        assert_eq!(samples[0].labels.to_map()["a"], "é\"x");
        assert_eq!(samples[0].value, 2.0);
        let QueryData::Scalar(sample) =
            data(r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"3"]}}"#)
        else {
            panic!("scalar expected")
        };
        assert_eq!((sample.timestamp, sample.value), (1_700_000_000.5, 3.0));
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#;
        assert!(matches!(data(matrix), QueryData::Other(kind) if kind == "matrix"));
        let matrix_first = r#"{"status":"success","data":{"result":[{"metric":{},"values":[[1,"1"]]}],"resultType":"matrix"}}"#;
        assert!(matches!(data(matrix_first), QueryData::Other(kind) if kind == "matrix"));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(matches!(data(empty), QueryData::Vector(v) if v.is_empty()));
    }

    #[test]
    fn samples_spanning_several_blocks_keep_their_labels() {
        let samples: Vec<String> = (0..40_000)
            .map(|i| {
                format!(
                    r#"{{"value":[{i},"{i}"],"metric":{{"pod":"pod-{i:06}","namespace":"ns-{}"}}}}"#,
                    i % 7
                )
            })
            .collect();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            samples.join(",")
        );
        let QueryData::Vector(decoded) = data(&body) else {
            panic!("vector expected")
        };
        assert_eq!(decoded.len(), 40_000);
        let blocks: std::collections::HashSet<*const u8> =
            decoded.iter().map(|s| s.labels.block.as_ptr()).collect();
        assert!(blocks.len() >= 2, "{} blocks", blocks.len());
        for (i, sample) in decoded.iter().enumerate() {
            assert_eq!(sample.labels.get("pod"), Some(format!("pod-{i:06}").as_str()));
            assert_eq!(
                sample.labels.get("namespace"),
                Some(format!("ns-{}", i % 7).as_str())
            );
            assert_eq!((sample.timestamp, sample.value), (i as f64, i as f64));
        }
    }

    #[test]
    fn decodes_errors() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let env: Envelope<QueryData> = serde_json::from_str(body).unwrap();
        assert_eq!(env.error_type.as_deref(), Some("bad_data"));
        assert!(env.data.is_none());
    }

    #[test]
    fn series_listings_keep_only_distinct_shapes() {
        let body = r#"{"status":"success","data":[
            {"__name__":"http_requests_total","namespace":"a","pod":"p1"},
            {"__name__":"http_requests_total","pod":"p2","namespace":"b"},
            {"__name__":"queue_depth","namespace":"a"}]}"#;
        let env: Envelope<SeriesList> = serde_json::from_str(body).unwrap();
        let list = env.data.unwrap();
        assert_eq!(list.series, 3);
        let shape = |name: &str, labels: &[&str]| SeriesShape {
            name: name.into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        assert_eq!(
            list.shapes,
            [
                shape("http_requests_total", &["namespace", "pod"]),
                shape("queue_depth", &["namespace"])
            ]
        );
    }
}
