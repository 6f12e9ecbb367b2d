//! Kubernetes manifests read with serde derive: each value's type is checked by the field that
//! holds it, and an error names the file and the field path (`spec.triggers[0].type`), in the
//! words devstack has always used ("must be a list, not a mapping").
//!
//! The wrappers below stand where a field's type matters: [`Object`] and [`Strict`] around the
//! structs (a [`Strict`] one refuses a key that is not one of its fields, as kubectl's strict field
//! validation does, since a misspelt setting left at its default is what this reader exists to
//! avoid), [`List`], and the scalars [`Str`], [`Int32`], [`Quoted`] and [`Quantity`].
//! `serde_path_to_error` keeps the path.

use std::{fmt::Display, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{
        self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess,
        SeqAccess, Visitor,
        value::{MapAccessDeserializer, SeqAccessDeserializer},
    },
};
use serde_yaml_ng::Value;

/// Where a value is: a file (or the name the built-in manifests go by) and a field path, for an
/// error that names both.
#[derive(Debug, Clone)]
pub struct At<'a> {
    file: &'a str,
    path: String,
}

impl<'a> At<'a> {
    /// A document of `file`. The ScaledObject is the only one of its file and a Deployment is
    /// found by name, so the field path alone says where.
    pub fn root(file: &'a str) -> Self {
        Self {
            file,
            path: String::new(),
        }
    }

    /// The field `key` of this mapping.
    pub fn field(&self, key: &str) -> Self {
        self.joined(key)
    }

    /// The field `key` of this mapping, quoted: a key with dots in it (an annotation).
    pub fn quoted(&self, key: &str) -> Self {
        self.joined(&format!("\"{key}\""))
    }

    /// The item `i` of this list.
    pub fn index(&self, i: usize) -> Self {
        Self {
            file: self.file,
            path: format!("{}[{i}]", self.path),
        }
    }

    fn joined(&self, key: &str) -> Self {
        let path = match self.path.as_str() {
            "" => key.to_owned(),
            path => format!("{path}.{key}"),
        };
        Self {
            file: self.file,
            path,
        }
    }

    /// The value of a field that must be there, this one.
    pub fn required<T>(&self, value: Option<T>) -> anyhow::Result<T> {
        value.ok_or_else(|| self.error("is required"))
    }

    pub fn error(&self, message: impl Display) -> anyhow::Error {
        match self.path.as_str() {
            "" => anyhow::anyhow!("{}: {message}", self.file),
            path => anyhow::anyhow!("{}: {path}: {message}", self.file),
        }
    }
}

/// Reads the document `value` of `file` as `T`; an error names the field where it is.
pub fn parse<T: DeserializeOwned>(file: &str, value: Value) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        // `.` is serde_path_to_error's name for the document itself.
        let path = match e.path().to_string() {
            root if root == "." => String::new(),
            path => path,
        };
        At { file, path }.error(e.into_inner())
    })
}

/// Sets the field at `path` of `doc` (`spec.triggers[0].metadata.messageCount`, as errors write
/// paths) to `value`, or removes it when `None`; `at` is the document, for the errors. Mappings
/// missing on the way are made; a list item must be there.
pub fn set(doc: &mut Value, at: &At<'_>, path: &str, value: Option<Value>) -> anyhow::Result<()> {
    let steps = steps(path).ok_or_else(|| at.error(format!("{path:?} is not a field path")))?;
    let mut node = doc;
    let mut here = at.clone();
    let last = steps.len() - 1;
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Key(key) => {
                if node.is_null() {
                    *node = Value::Mapping(serde_yaml_ng::Mapping::new());
                }
                let Value::Mapping(map) = node else {
                    return Err(here.error(format!("{} has no fields", describe(node))));
                };
                here = here.field(key);
                let key = Value::String(key.to_owned());
                if i == last {
                    match value {
                        Some(value) => {
                            map.insert(key, value);
                        }
                        None => {
                            map.remove(&key);
                        }
                    }
                    return Ok(());
                }
                node = map.entry(key).or_insert(Value::Null);
            }
            Step::Index(index) => {
                let Value::Sequence(list) = node else {
                    return Err(here.error(format!("{} is not a list", describe(node))));
                };
                let len = list.len();
                here = here.index(index);
                if index >= len {
                    return Err(here.error(format!("no such item (the list holds {len})")));
                }
                if i == last {
                    match value {
                        Some(value) => list[index] = value,
                        None => {
                            list.remove(index);
                        }
                    }
                    return Ok(());
                }
                node = &mut list[index];
            }
        }
    }
    Ok(())
}

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[0].c` as its steps; `None` when malformed (an empty name, an index that is not a number).
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() {
            return None;
        }
        steps.push(Step::Key(name));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            steps.push(Step::Index(index.parse().ok()?));
            rest = match after {
                "" => "",
                more => more.strip_prefix('[')?,
            };
        }
    }
    Some(steps)
}

/// How an error describes a value it did not want: `the string "2"`, `a list`.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn wrong<E: de::Error>(want: &str, value: &Value) -> E {
    E::custom(format_args!("{want}, not {}", describe(value)))
}

/// A string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str(pub String);

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        string(deserializer, "must be a string").map(Self)
    }
}

/// A string where the schema allows nothing else: a trigger's `metadata` values, which the CRD
/// types as strings (`additionalProperties: {type: string}`), so the API server refuses
/// `messageCount: 5` unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted(pub String);

impl<'de> Deserialize<'de> for Quoted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        string(deserializer, "must be a string (quote it)").map(Self)
    }
}

fn string<'de, D: Deserializer<'de>>(deserializer: D, want: &str) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        other => Err(wrong(want, &other)),
    }
}

/// An `int32` field: every count and period of a ScaledObject and an HPA behavior.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int32(pub i64);

impl<'de> Deserialize<'de> for Int32 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Number(n) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => Ok(Self(i)),
                Some(i) => Err(de::Error::custom(format_args!(
                    "{i} does not fit in an int32"
                ))),
                None => Err(de::Error::custom(format_args!("{n} is not a whole number"))),
            },
            other => Err(wrong("must be a whole number", &other)),
        }
    }
}

/// A Kubernetes quantity as written, a number (`0.05`) or a string (`50m`); its reader parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Number(n) => Ok(Self(n.to_string())),
            Value::String(s) => Ok(Self(s)),
            other => Err(wrong("must be a number", &other)),
        }
    }
}

/// A mapping read as `T`, whatever other keys it holds.
#[derive(Debug)]
pub struct Object<T>(pub T);

/// A mapping read as `T`, every key one of `T`'s fields.
#[derive(Debug)]
pub struct Strict<T>(pub T);

/// A list of `T`.
#[derive(Debug)]
pub struct List<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Expect(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Strict<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Expect(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Expect(PhantomData))
    }
}

/// A mapping or a list, handed on as the map or the sequence it is, so that serde_path_to_error
/// keeps following the path into it; anything else is an error that says what it is.
trait Container<'de>: Sized {
    /// The start of the error: `must be a mapping`.
    const WANT: &'static str;

    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let _ = map;
        Err(de::Error::custom(format_args!(
            "{}, not a mapping",
            Self::WANT
        )))
    }

    fn seq<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        let _ = seq;
        Err(de::Error::custom(format_args!(
            "{}, not a list",
            Self::WANT
        )))
    }
}

impl<'de, T: Deserialize<'de>> Container<'de> for Object<T> {
    const WANT: &'static str = "must be a mapping";

    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Self)
    }
}

impl<'de, T: Deserialize<'de>> Container<'de> for Strict<T> {
    const WANT: &'static str = "must be a mapping";

    fn map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::deserialize(KnownFields(map)).map(Self)
    }
}

impl<'de, T: Deserialize<'de>> Container<'de> for List<T> {
    const WANT: &'static str = "must be a list";

    fn seq<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        Vec::deserialize(SeqAccessDeserializer::new(seq)).map(Self)
    }
}

struct Expect<C>(PhantomData<C>);

impl<'de, C: Container<'de>> Visitor<'de> for Expect<C> {
    type Value = C;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(C::WANT)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<C, E> {
        Err(wrong(C::WANT, &Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<C, E> {
        Err(wrong(C::WANT, &Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<C, E> {
        Err(wrong(C::WANT, &Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<C, E> {
        Err(wrong(C::WANT, &Value::Number(v.into())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<C, E> {
        Err(wrong(C::WANT, &Value::String(v.to_owned())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<C, E> {
        Err(wrong(C::WANT, &Value::Null))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<C, A::Error> {
        C::map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<C, A::Error> {
        C::seq(seq)
    }

    /// A tagged value (`!thing 5`), which serde_yaml_ng hands over as an enum named by its tag.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<C, A::Error> {
        let (tag, _): (String, _) = data.variant()?;
        Err(de::Error::custom(format_args!(
            "{}, not a value tagged !{tag}",
            C::WANT
        )))
    }
}

/// A mapping's entries for a struct's derived `Deserialize`, each key checked against the
/// struct's fields (which serde passes to `deserialize_struct`) before the struct sees it.
struct KnownFields<A>(A);

impl<'de, A: MapAccess<'de>> Deserializer<'de> for KnownFields<A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.0)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(Checked {
            map: self.0,
            fields,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

struct Checked<A> {
    map: A,
    fields: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Checked<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.map.next_key_seed(Known {
            seed,
            fields: self.fields,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A key, handed to the struct only if it is one of `fields`. The key is read as the mapping's
/// own deserializer gives it, so serde_path_to_error records it and the error names it.
struct Known<K> {
    seed: K,
    fields: &'static [&'static str],
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for Known<K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K::Value, D::Error> {
        let key = Value::deserialize(deserializer)?;
        match key.as_str() {
            Some(name) if self.fields.contains(&name) => {
                self.seed
                    .deserialize(IntoDeserializer::<D::Error>::into_deserializer(name))
            }
            _ => Err(de::Error::custom(format_args!(
                "unknown field (known here: {})",
                self.fields.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::de::IgnoredAny;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        spec: Option<Strict<Spec>>,
        other: Option<Object<Loose>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        count: Option<Int32>,
        names: Option<List<Str>>,
        labels: Option<Object<std::collections::BTreeMap<String, Quoted>>>,
        tolerance: Option<Quantity>,
        #[serde(rename = "ignored")]
        _ignored: Option<IgnoredAny>,
    }

    #[derive(Debug, Deserialize)]
    struct Loose {
        name: Option<Str>,
    }

    fn read(text: &str) -> anyhow::Result<Doc> {
        parse("so.yaml", serde_yaml_ng::from_str(text).expect("YAML"))
    }

    fn error(text: &str) -> String {
        read(text).expect_err("refused").to_string()
    }

    #[test]
    fn values_of_the_right_type_are_read() {
        let doc = read(
            "spec:\n  count: 3\n  names: [a, b]\n  labels: {x: \"1\"}\n  tolerance: 50m\n  ignored: {any: [thing]}\nother:\n  name: n\n  whatever: 1\n",
        )
        .expect("reads");
        let spec = doc.spec.expect("spec").0;
        assert_eq!(spec.count, Some(Int32(3)));
        let names: Vec<String> = spec
            .names
            .expect("names")
            .0
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(spec.labels.expect("labels").0["x"], Quoted("1".into()));
        assert_eq!(spec.tolerance, Some(Quantity("50m".into())));
        assert_eq!(doc.other.expect("other").0.name, Some(Str("n".into())));
        // Null is absent, as Kubernetes drops null fields.
        assert!(
            read("spec:\n  count: null\n")
                .unwrap()
                .spec
                .unwrap()
                .0
                .count
                .is_none()
        );
    }

    #[test]
    fn errors_name_the_file_the_path_and_what_was_found() {
        for (text, expected) in [
            (
                "spec: 5\n",
                "so.yaml: spec: must be a mapping, not the number 5",
            ),
            (
                "spec:\n  count: \"2\"\n",
                "so.yaml: spec.count: must be a whole number, not the string \"2\"",
            ),
            (
                "spec:\n  count: 1.5\n",
                "so.yaml: spec.count: 1.5 is not a whole number",
            ),
            (
                "spec:\n  count: 3000000000\n",
                "so.yaml: spec.count: 3000000000 does not fit in an int32",
            ),
            (
                "spec:\n  names: {a: b}\n",
                "so.yaml: spec.names: must be a list, not a mapping",
            ),
            (
                "spec:\n  names: [a, [b]]\n",
                "so.yaml: spec.names[1]: must be a string, not a list",
            ),
            (
                "spec:\n  labels:\n    x: 5\n",
                "so.yaml: spec.labels.x: must be a string (quote it), not the number 5",
            ),
            (
                "spec:\n  tolerance: true\n",
                "so.yaml: spec.tolerance: must be a number, not the boolean true",
            ),
            (
                "spec:\n  count: !big 5\n",
                "so.yaml: spec.count: must be a whole number, not a value tagged !big",
            ),
            (
                "spec:\n  names: !many [a]\n",
                "so.yaml: spec.names: must be a list, not a value tagged !many",
            ),
            (
                "spec:\n  cuont: 1\n",
                "so.yaml: spec.cuont: unknown field (known here: count, names, labels, tolerance, ignored)",
            ),
            (
                "other: [x]\n",
                "so.yaml: other: must be a mapping, not a list",
            ),
        ] {
            assert_eq!(error(text), expected, "{text}");
        }
    }

    #[test]
    fn paths_join_fields_indices_and_quoted_keys() {
        let at = At::root("f.yaml");
        assert_eq!(at.error("bad").to_string(), "f.yaml: bad");
        let policy = at.field("spec").field("policies").index(2).field("type");
        assert_eq!(
            policy.error("x").to_string(),
            "f.yaml: spec.policies[2].type: x"
        );
        let annotation = at.field("metadata").quoted("a.b/c");
        assert_eq!(
            annotation.error("y").to_string(),
            "f.yaml: metadata.\"a.b/c\": y"
        );
    }

    #[test]
    fn set_writes_and_removes_fields_along_a_path_making_mappings_on_the_way() {
        let at = At::root("so.yaml");
        let mut doc: Value =
            serde_yaml_ng::from_str("spec:\n  triggers:\n    - metadata: {queueName: q}\n")
                .unwrap();
        set(&mut doc, &at, "spec.pollingInterval", Some(Value::from(10))).unwrap();
        set(
            &mut doc,
            &at,
            "spec.triggers[0].metadata.messageCount",
            Some(Value::from("7")),
        )
        .unwrap();
        set(
            &mut doc,
            &at,
            "spec.advanced.horizontalPodAutoscalerConfig.behavior",
            Some(Value::from(1)),
        )
        .unwrap();
        set(&mut doc, &at, "spec.advanced", None).unwrap();
        let want: Value = serde_yaml_ng::from_str(
            "spec:\n  triggers:\n    - metadata: {queueName: q, messageCount: \"7\"}\n  pollingInterval: 10\n",
        )
        .unwrap();
        assert_eq!(doc, want);
        let error = |path: &str| {
            set(&mut doc.clone(), &at, path, Some(Value::from(1)))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("spec.triggers[3].type"),
            "so.yaml: spec.triggers[3]: no such item (the list holds 1)"
        );
        assert_eq!(
            error("spec.pollingInterval.x"),
            "so.yaml: spec.pollingInterval: the number 10 has no fields"
        );
        assert_eq!(error("spec..x"), "so.yaml: \"spec..x\" is not a field path");
        assert_eq!(
            error("spec.triggers[x]"),
            "so.yaml: \"spec.triggers[x]\" is not a field path"
        );
    }
}
