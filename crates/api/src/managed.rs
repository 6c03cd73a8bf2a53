//! Field management and server-side apply, as upstream's structured-merge-diff: every write
//! records which manager set which fields (`metadata.managedFields`, in the FieldsV1 form);
//! an apply (`application/apply-patch+yaml`) merges the manager's configuration into the
//! object, removes what the manager applied before and no longer applies (unless another
//! manager owns it), and refuses to change a field another manager owns unless forced.
//!
//! Fields are identified as upstream does: `f:<name>` for struct fields and map keys,
//! `k:{"name":"web"}` for items of lists keyed by their `x-kubernetes-list-map-keys`,
//! `v:<value>` for items of sets, and `.` for an item itself. Which lists are keyed sets or
//! atomic comes from the published schemas (`x-kubernetes-list-type`, `…-map-type`).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

const REF_PREFIX: &str = "#/components/schemas/";

/// A set of fields: a tree whose nodes are members (`.`) or lead to members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Upstream's FieldsV1 JSON.
    pub fn to_fields_v1(&self) -> Value {
        let mut object = Map::new();
        if self.member && !self.children.is_empty() {
            object.insert(".".into(), json!({}));
        }
        for (key, child) in &self.children {
            if !child.is_empty() {
                object.insert(key.clone(), child.to_fields_v1());
            }
        }
        Value::Object(object)
    }

    pub fn from_fields_v1(value: &Value) -> Self {
        let Some(map) = value.as_object() else {
            return Self::default();
        };
        if map.is_empty() {
            return Self {
                member: true,
                children: BTreeMap::new(),
            };
        }
        Self {
            member: map.contains_key("."),
            children: map
                .iter()
                .filter(|(k, _)| *k != ".")
                .map(|(k, v)| (k.clone(), Self::from_fields_v1(v)))
                .collect(),
        }
    }

    /// Whether subtracting `self` from the set `fields_v1` encodes would take anything
    /// away, read from the encoding.
    fn meets(&self, fields_v1: &Value) -> bool {
        let Some(map) = fields_v1.as_object() else {
            return false;
        };
        (self.member && (map.is_empty() || map.contains_key(".")))
            || self
                .children
                .iter()
                .any(|(key, child)| map.get(key).is_some_and(|v| child.meets(v)))
    }

    /// [`Self::is_empty`] of the set `fields_v1` encodes, read from the encoding.
    fn is_empty_v1(fields_v1: &Value) -> bool {
        match fields_v1.as_object() {
            None => true,
            Some(map) => !map.is_empty() && !map.contains_key(".") && map.values().all(Self::is_empty_v1),
        }
    }

    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (key, child) in &other.children {
            self.children.entry(key.clone()).or_default().union(child);
        }
    }

    pub fn subtract(&mut self, other: &FieldSet) {
        if other.member {
            self.member = false;
        }
        for (key, child) in &other.children {
            if let Some(mine) = self.children.get_mut(key) {
                mine.subtract(child);
            }
        }
        self.children.retain(|_, child| !child.is_empty());
    }

    /// Every member, as its path of keys.
    pub fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (key, child) in &self.children {
            prefix.push(key.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Whether the set has any field at `path` or below it.
    fn any_within(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((head, rest)) => self.children.get(head).is_some_and(|c| c.any_within(rest)),
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((head, rest)) => self.children.get(head).is_some_and(|c| c.contains(rest)),
        }
    }

    pub fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((head, rest)) => self.children.entry(head.clone()).or_default().insert(rest),
        }
    }
}

/// How a list's items are told apart.
#[derive(Debug, Clone, PartialEq)]
enum ListType {
    Atomic,
    Set,
    /// Keyed by these fields, each with the default an item lacking it is keyed by.
    Map(Vec<(String, Option<&'static Value>)>),
}

/// A node of the published schemas, with the schemas to resolve its references in.
#[derive(Clone, Copy)]
pub struct Schema<'a> {
    node: Option<&'a Value>,
    all: &'a Map<String, Value>,
    /// The type `node` is, when it is a named type itself rather than a reference.
    name: Option<&'a str>,
}

impl<'a> Schema<'a> {
    /// The schema of the named type (see [`crate::schemas`]).
    pub fn named(all: &'a Map<String, Value>, name: &str) -> Self {
        let (name, node) = all.get_key_value(name).map(|(k, v)| (k.as_str(), v)).unzip();
        Self { node, all, name }
    }

    fn untyped(all: &'a Map<String, Value>) -> Self {
        Self {
            node: None,
            all,
            name: None,
        }
    }

    /// The node with its references followed, and the name of the type it is (if named).
    fn resolved_named(self) -> Option<(Option<&'a str>, &'a Value)> {
        let (mut name, mut node) = (self.name, self.node?);
        for _ in 0..8 {
            let reference = node
                .get("$ref")
                // Not `pointer`: it allocates per segment, and this runs per field per write.
                .or_else(|| node.get("allOf")?.get(0)?.get("$ref"))
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX));
            match reference {
                Some(next) => {
                    name = Some(next);
                    node = self.all.get(next)?;
                }
                None => break,
            }
        }
        Some((name, node))
    }

    fn resolved(self) -> Option<&'a Value> {
        self.resolved_named().map(|(_, node)| node)
    }

    /// Which of this type's fields upstream's Go type writes even in its zero value, so
    /// that they are there in any object of the type (see
    /// [`crate::omitempty::always_written`]). The type is resolved once, for a walk over
    /// an object's fields.
    fn always_written(self) -> impl Fn(&str) -> bool + 'a {
        let ty = self.resolved_named().and_then(|(name, _)| name);
        move |key| ty.is_some_and(|ty| crate::omitempty::always_written(ty, key))
    }

    fn child(self, key: &str) -> Self {
        let node = self.resolved();
        let child = node
            .and_then(|n| n.get("properties"))
            .and_then(|p| p.get(key))
            .or_else(|| {
                node.and_then(|n| n.get("additionalProperties"))
                    .filter(|a| a.is_object())
            });
        Self {
            node: child,
            all: self.all,
            name: None,
        }
    }

    fn items(self) -> Self {
        Self {
            node: self.resolved().and_then(|n| n.get("items")),
            all: self.all,
            name: None,
        }
    }

    /// The extension on the node itself (a property's) or on the type it refers to.
    fn extension(self, name: &str) -> Option<&'a Value> {
        self.node
            .and_then(|n| n.get(name))
            .or_else(|| self.resolved().and_then(|n| n.get(name)))
    }

    fn atomic_map(self) -> bool {
        self.extension("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
    }

    fn list_type(self) -> ListType {
        // A key field an item lacks counts with its declared default, as upstream keys
        // items (`ports: [{port: 80}]` is the item of port 80 and protocol TCP).
        let item_type = self.items().resolved_named().and_then(|(name, _)| name);
        let key = |name: &str| {
            let default = item_type.and_then(|ty| crate::omitempty::default_of(ty, name));
            (name.to_string(), default)
        };
        let keys = || -> Vec<(String, Option<&'static Value>)> {
            self.extension("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(key))
                .collect()
        };
        match self.extension("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => ListType::Map(keys()),
            Some("set") => ListType::Set,
            Some(_) => ListType::Atomic,
            None => {
                // Older annotations: a merge strategy with a key makes a keyed list.
                let strategy = self.extension("x-kubernetes-patch-strategy").and_then(Value::as_str);
                let merge_key = self.extension("x-kubernetes-patch-merge-key").and_then(Value::as_str);
                match (strategy.is_some_and(|s| s.contains("merge")), merge_key) {
                    (true, Some(name)) => ListType::Map(vec![key(name)]),
                    (true, None) => ListType::Set,
                    _ => ListType::Atomic,
                }
            }
        }
    }
}

/// The key of a list item: `k:{...}` for keyed lists, `v:...` for sets.
fn item_key(item: &Value, list: &ListType) -> Option<String> {
    match list {
        ListType::Map(keys) => {
            let mut fields = BTreeMap::new();
            for (key, default) in keys {
                if let Some(value) = item.get(key).or(*default) {
                    fields.insert(key.clone(), value.clone());
                }
            }
            (!fields.is_empty()).then(|| format!("k:{}", serde_json::to_string(&fields).unwrap_or_default()))
        }
        ListType::Set => Some(format!("v:{}", serde_json::to_string(item).unwrap_or_default())),
        ListType::Atomic => None,
    }
}

/// The fields `value` sets, typed by `schema`.
pub fn fields_of(value: &Value, schema: Schema<'_>) -> FieldSet {
    let mut set = FieldSet::default();
    match value {
        Value::Object(map) if !schema.atomic_map() => {
            for (key, inner) in map {
                let mut child = fields_of(inner, schema.child(key));
                if child.is_empty() {
                    // An empty object, or a scalar: the field itself.
                    child.member = true;
                }
                set.children.insert(format!("f:{key}"), child);
            }
        }
        Value::Array(items) => {
            let list = schema.list_type();
            if list == ListType::Atomic {
                return set;
            }
            for item in items {
                let Some(key) = item_key(item, &list) else { continue };
                let mut child = if list == ListType::Set {
                    FieldSet::default()
                } else {
                    fields_of(item, schema.items())
                };
                child.member = true;
                set.children.insert(key, child);
            }
        }
        _ => {}
    }
    set
}

/// The fieldsV1 of the fields a new object sets, as [`scoped`] over [`fields_of`] would
/// encode them, in one walk (no field set is built and then encoded): the server's own
/// fields left out, top-level fields kept only when `records` keeps them.
fn created_fields_v1(object: &Value, schema: Schema<'_>, records: impl Fn(&str) -> bool) -> Map<String, Value> {
    let mut fields = Map::new();
    let Some(map) = object.as_object() else {
        return fields;
    };
    let always_written = schema.always_written();
    for (key, value) in map {
        if SERVER_TOP_LEVEL.contains(&key.as_str()) || !records(key) {
            continue;
        }
        let child = schema.child(key);
        let encoded = match value {
            Value::Object(metadata) if key == "metadata" && !child.atomic_map() => {
                let mut kept = Map::new();
                let written = child.always_written();
                for (field, inner) in metadata {
                    if !SERVER_METADATA.contains(&field.as_str()) {
                        kept.insert(
                            format!("f:{field}"),
                            fields_v1_or_leaf(inner, child.child(field), written(field)),
                        );
                    }
                }
                if kept.is_empty() && !metadata.is_empty() {
                    continue;
                }
                Value::Object(kept)
            }
            _ => fields_v1_or_leaf(value, child, always_written(key)),
        };
        fields.insert(format!("f:{key}"), encoded);
    }
    fields
}

/// The top-level fields the server sets.
const SERVER_TOP_LEVEL: &[&str] = &["apiVersion", "kind"];

/// The metadata fields the server sets.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// A field's fieldsV1: its own fields, or `{}` when it is one field itself. `present`:
/// whether the kind's zero value has the field (a plain struct or a field without
/// omitempty in upstream's Go types); a node it lacks is a field itself too, a `.` beside
/// its own fields, as upstream's compare with the zero value finds it added.
fn fields_v1_or_leaf(value: &Value, schema: Schema<'_>, present: bool) -> Value {
    match fields_v1_of(value, schema, present) {
        None => Value::Object(Map::new()),
        Some(mut fields) => {
            if !present {
                fields.insert(".".into(), Value::Object(Map::new()));
            }
            Value::Object(fields)
        }
    }
}

/// The fieldsV1 of a new object's fields below `value` (see [`fields_v1_or_leaf`]);
/// `None` when `value` holds no fields.
fn fields_v1_of(value: &Value, schema: Schema<'_>, present: bool) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) if !map.is_empty() && !schema.atomic_map() => {
            let always_written = schema.always_written();
            Some(
                map.iter()
                    .map(|(key, inner)| {
                        let there = present && always_written(key);
                        (format!("f:{key}"), fields_v1_or_leaf(inner, schema.child(key), there))
                    })
                    .collect(),
            )
        }
        Value::Array(items) => {
            let list = schema.list_type();
            if list == ListType::Atomic {
                return None;
            }
            let mut fields = Map::new();
            for item in items {
                let Some(key) = item_key(item, &list) else { continue };
                // An item is a field itself, and `.` says so beside its own fields.
                let own = match list {
                    ListType::Set => Value::Object(Map::new()),
                    _ => fields_v1_or_leaf(item, schema.items(), false),
                };
                fields.insert(key, own);
            }
            (!fields.is_empty()).then_some(fields)
        }
        _ => None,
    }
}

/// The value at a path of field keys, if any.
fn value_at<'v>(value: &'v Value, path: &[String], schema: Schema<'_>) -> Option<&'v Value> {
    let Some((head, rest)) = path.split_first() else {
        return Some(value);
    };
    if let Some(field) = head.strip_prefix("f:") {
        return value_at(value.get(field)?, rest, schema.child(field));
    }
    let list = schema.list_type();
    let item = value
        .as_array()?
        .iter()
        .find(|item| item_key(item, &list).as_deref() == Some(head.as_str()))?;
    value_at(item, rest, schema.items())
}

/// Removes the field at `path` from `value`.
fn remove_at(value: &mut Value, path: &[String], schema: Schema<'_>) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    if let Some(field) = head.strip_prefix("f:") {
        let Some(map) = value.as_object_mut() else { return };
        if rest.is_empty() {
            map.remove(field);
        } else if let Some(inner) = map.get_mut(field) {
            remove_at(inner, rest, schema.child(field));
        }
        return;
    }
    let list = schema.list_type();
    let Some(items) = value.as_array_mut() else { return };
    if rest.is_empty() {
        items.retain(|item| item_key(item, &list).as_deref() != Some(head.as_str()));
    } else if let Some(item) = items
        .iter_mut()
        .find(|item| item_key(item, &list).as_deref() == Some(head.as_str()))
    {
        remove_at(item, rest, schema.items());
    }
}

/// Merges an applied configuration into the object: maps and structs field by field, keyed
/// lists and sets item by item, atomic lists and scalars replaced.
fn merge(current: &mut Value, applied: &Value, schema: Schema<'_>) {
    match (current, applied) {
        (Value::Object(current), Value::Object(applied)) if !schema.atomic_map() => {
            for (key, value) in applied {
                match current.get_mut(key) {
                    Some(existing) => merge(existing, value, schema.child(key)),
                    None => {
                        current.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(current), Value::Array(applied)) if schema.list_type() != ListType::Atomic => {
            let list = schema.list_type();
            for item in applied {
                let key = item_key(item, &list);
                match current.iter_mut().find(|c| key.is_some() && item_key(c, &list) == key) {
                    Some(existing) => merge(existing, item, schema.items()),
                    None => current.push(item.clone()),
                }
            }
        }
        (current, applied) => *current = applied.clone(),
    }
}

/// Fields the server owns, never a manager's.
static SERVER_FIELDS: std::sync::LazyLock<FieldSet> = std::sync::LazyLock::new(server_fields);

fn server_fields() -> FieldSet {
    let mut set = FieldSet::default();
    for top in SERVER_TOP_LEVEL {
        set.insert(&[format!("f:{top}")]);
    }
    for field in SERVER_METADATA {
        set.insert(&["f:metadata".to_string(), format!("f:{field}")]);
    }
    set
}

/// Which part of an object a write may touch: the main resource leaves `status` alone, the
/// status subresource only touches it, the scale subresource touches the main resource's
/// replicas (and is recorded as `subresource: scale`, as upstream records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main,
    Status,
    Scale,
}

fn scoped(mut set: FieldSet, scope: Scope, has_status: bool) -> FieldSet {
    set.subtract(&SERVER_FIELDS);
    match scope {
        Scope::Main | Scope::Scale if has_status => {
            set.children.remove("f:status");
        }
        Scope::Status => set.children.retain(|k, _| k == "f:status"),
        Scope::Main | Scope::Scale => {}
    }
    set
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

impl Entry {
    fn from_json(entry: &Value) -> Self {
        let text = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Self {
            manager: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            time: text("time"),
            subresource: text("subresource"),
            fields: entry.get("fieldsV1").map(FieldSet::from_fields_v1).unwrap_or_default(),
        }
    }

    /// Whether the encoded entry is `manager`'s for `operation` on `subresource`.
    fn json_in_slot(entry: &Value, manager: &str, operation: &str, subresource: &str) -> bool {
        let text = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
        text("manager") == manager && text("operation") == operation && text("subresource") == subresource
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({"manager": self.manager, "operation": self.operation,
            "apiVersion": self.api_version, "time": self.time, "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1()});
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }

    fn same_slot(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// The object's `metadata.managedFields`.
pub fn entries_of(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(Entry::from_json)
        .collect()
}

fn set_entries(object: &mut Value, entries: &[Entry]) {
    let kept = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    set_encoded_entries(object, kept);
}

/// The object's `metadata.managedFields`, already encoded; none at all when empty.
fn set_encoded_entries(object: &mut Value, entries: Vec<Value>) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Who is writing, as what, at what time.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub time: &'a str,
    pub scope: Scope,
    pub has_status: bool,
}

impl Writer<'_> {
    /// Whether this writer's changes to the top-level field `key` are recorded (what
    /// [`scoped`] keeps).
    fn records(&self, key: &str) -> bool {
        match self.scope {
            Scope::Status => key == "status",
            Scope::Main | Scope::Scale if self.has_status => key != "status",
            Scope::Main | Scope::Scale => true,
        }
    }

    fn subresource(&self) -> &'static str {
        match self.scope {
            Scope::Main => "",
            Scope::Status => "status",
            Scope::Scale => "scale",
        }
    }
}

/// Records a non-apply write (create, update, patch) of `new` over `old`: the writer owns
/// what it changed, which no other manager owns any more; removed fields leave every set.
/// Entries the client wrote itself (a changed `managedFields`) are kept as written.
pub fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer<'_>, schema: Schema<'_>) {
    const POINTER: &str = "/metadata/managedFields";
    if old.is_none() && new.pointer(POINTER).is_none() {
        // A create: its one entry holds every field it sets, encoded as it is found.
        let fields = created_fields_v1(new, schema, |key| writer.records(key));
        let entries = if fields.is_empty() {
            Vec::new()
        } else {
            let mut entry = json!({"manager": writer.manager, "operation": "Update",
                "apiVersion": writer.api_version, "time": writer.time, "fieldsType": "FieldsV1",
                "fieldsV1": Value::Object(fields)});
            if !writer.subresource().is_empty() {
                entry["subresource"] = json!(writer.subresource());
            }
            vec![entry]
        };
        set_encoded_entries(new, entries);
        return;
    }
    let stored = old.and_then(|o| o.pointer(POINTER));
    match new.pointer(POINTER) {
        // Not sent: the record goes on from the stored one.
        None => {}
        // An empty list resets the record, as upstream.
        Some(Value::Array(list)) if list.is_empty() => return,
        // The client rewrote the entries (kubectl's client-side apply migration does).
        Some(sent) if old.is_some() && Some(sent) != stored => return,
        Some(_) => {}
    }
    let (changed, removed) = match old {
        None => (
            scoped(
                field_diff_where(new, None, schema, Compare::Changed, |key| writer.records(key), true),
                writer.scope,
                writer.has_status,
            ),
            FieldSet::default(),
        ),
        Some(old) => {
            let records = |key: &str| writer.records(key);
            (
                scoped(
                    field_diff_where(new, Some(old), schema, Compare::Changed, records, true),
                    writer.scope,
                    writer.has_status,
                ),
                scoped(
                    field_diff_where(old, Some(new), schema, Compare::Removed, records, true),
                    writer.scope,
                    writer.has_status,
                ),
            )
        }
    };
    // The stored entries, taken from `new` when it carries them (every patch does) so that
    // the entries this write leaves alone keep their encoding instead of being decoded and
    // encoded again: most writes touch one entry of several.
    let previous: Vec<Value> = match (old, new.pointer_mut(POINTER)) {
        (None, _) => Vec::new(),
        (Some(_), Some(Value::Array(sent))) => std::mem::take(sent),
        (Some(_), _) => stored.and_then(Value::as_array).cloned().unwrap_or_default(),
    };
    let subresource = writer.subresource();
    let mut entries = Vec::with_capacity(previous.len() + 1);
    let mut own_found = false;
    for encoded in previous {
        let own = Entry::json_in_slot(&encoded, writer.manager, "Update", subresource);
        let fields = encoded.get("fieldsV1");
        let grows = own && !own_found && !changed.is_empty();
        let shrinks = fields.is_some_and(|f| removed.meets(f) || (!own && changed.meets(f)));
        own_found |= own;
        if !grows && !shrinks {
            if !fields.is_none_or(FieldSet::is_empty_v1) {
                entries.push(encoded);
            }
            continue;
        }
        let mut entry = Entry::from_json(&encoded);
        entry.fields.subtract(&removed);
        if !own {
            entry.fields.subtract(&changed);
        }
        if grows {
            entry.fields.union(&changed);
            entry.time = writer.time.to_string();
            entry.api_version = writer.api_version.to_string();
        }
        if !entry.fields.is_empty() {
            entries.push(entry.to_json());
        }
    }
    if !own_found && !changed.is_empty() {
        entries.push(
            Entry {
                manager: writer.manager.to_string(),
                operation: "Update".into(),
                api_version: writer.api_version.to_string(),
                time: writer.time.to_string(),
                subresource: subresource.to_string(),
                fields: changed,
            }
            .to_json(),
        );
    }
    set_encoded_entries(new, entries);
}

/// Whether [`fields_of`] finds any field in `value` (if not, `value` is one field itself).
fn has_fields(value: &Value, schema: Schema<'_>) -> bool {
    match value {
        Value::Object(map) => !map.is_empty() && !schema.atomic_map(),
        Value::Array(items) => {
            let list = schema.list_type();
            list != ListType::Atomic && items.iter().any(|item| item_key(item, &list).is_some())
        }
        _ => false,
    }
}

/// A list's items by their key (the first of duplicates, as a lookup by key finds it).
fn items_by_key<'v>(items: &'v [Value], list: &ListType) -> HashMap<String, &'v Value> {
    let mut by_key = HashMap::with_capacity(items.len());
    for item in items {
        if let Some(key) = item_key(item, list) {
            by_key.entry(key).or_insert(item);
        }
    }
    by_key
}

/// Which fields of the walked object [`field_diff`] keeps, against the other object.
#[derive(Debug, Clone, Copy)]
enum Compare {
    /// Those whose value differs in the other object or is missing there.
    Changed,
    /// Those that are not fields of the other object.
    Removed,
}

impl Compare {
    /// Whether the field `this` counts, the other object holding `other` at its path.
    fn counts(self, this: &Value, other: Option<&Value>, schema: Schema<'_>) -> bool {
        match self {
            Compare::Changed => other != Some(this),
            // A value with fields of its own is no field itself.
            Compare::Removed => other.is_none_or(|o| has_fields(o, schema)),
        }
    }

    /// What the walk below a map field compares against.
    fn below<'v>(self, other: Option<&'v Value>, schema: Schema<'_>) -> Option<&'v Value> {
        match self {
            Compare::Changed => other,
            // Fields below a value that is itself a field in the other object are not
            // fields there.
            Compare::Removed => other.filter(|o| has_fields(o, schema)),
        }
    }
}

/// The fields of `this` (as [`fields_of`] finds them) that `compare` keeps against
/// `other`: one walk of both trees, list items matched by key, instead of a lookup from
/// the root per field.
///
/// `present`: whether the other object has this node, in upstream's view of it as its Go
/// type (where plain structs and fields without omitempty are always there): a node with
/// fields of its own that the other object lacks is a field itself too (upstream's `.`),
/// added or removed with it.
fn field_diff(this: &Value, other: Option<&Value>, schema: Schema<'_>, compare: Compare, present: bool) -> FieldSet {
    if other == Some(this) {
        // Neither changed nor removed fields below: most of an object stays as it was (a
        // status write leaves the spec alone), and comparing is cheaper than walking.
        return FieldSet::default();
    }
    field_diff_where(this, other, schema, compare, |_| true, present)
}

/// [`field_diff`] over the top-level fields `keep` keeps: a write through a subresource
/// records only its own part, so the rest is neither compared nor walked.
fn field_diff_where(
    this: &Value,
    other: Option<&Value>,
    schema: Schema<'_>,
    compare: Compare,
    keep: impl Fn(&str) -> bool,
    present: bool,
) -> FieldSet {
    let mut set = FieldSet::default();
    match this {
        Value::Object(map) if !schema.atomic_map() => {
            let other = other.and_then(Value::as_object);
            let always_written = schema.always_written();
            for (key, inner) in map.iter().filter(|(key, _)| keep(key)) {
                let there = other.and_then(|o| o.get(key));
                let child_schema = schema.child(key);
                let child = if has_fields(inner, child_schema) {
                    let there_too = there.is_some() || (present && always_written(key));
                    let mut child = field_diff(
                        inner,
                        compare.below(there, child_schema),
                        child_schema,
                        compare,
                        there_too,
                    );
                    child.member |= !there_too;
                    child
                } else {
                    FieldSet {
                        member: compare.counts(inner, there, child_schema),
                        children: BTreeMap::new(),
                    }
                };
                if !child.is_empty() {
                    set.children.insert(format!("f:{key}"), child);
                }
            }
        }
        Value::Array(items) => {
            let list = schema.list_type();
            if list == ListType::Atomic {
                return set;
            }
            let other = other
                .and_then(Value::as_array)
                .map(|o| items_by_key(o, &list))
                .unwrap_or_default();
            for item in items {
                let Some(key) = item_key(item, &list) else { continue };
                let there = other.get(&key).copied();
                let mut child = if list == ListType::Set {
                    FieldSet::default()
                } else {
                    field_diff(item, there, schema.items(), compare, there.is_some())
                };
                // An item is a field itself only where the other object lacks it: an item
                // whose fields changed is not added again.
                child.member = there.is_none();
                if child.is_empty() {
                    set.children.remove(&key);
                } else {
                    set.children.insert(key, child);
                }
            }
        }
        _ => {}
    }
    set
}

/// The fields of `new` whose value differs in `old` or is missing there.
#[cfg(test)]
fn changed_fields(old: Option<&Value>, new: &Value, schema: Schema<'_>) -> FieldSet {
    field_diff(new, old, schema, Compare::Changed, true)
}

/// The fields of `old` that are not fields of `new`.
#[cfg(test)]
fn removed_fields(old: &Value, new: Option<&Value>, schema: Schema<'_>) -> FieldSet {
    field_diff(old, new, schema, Compare::Removed, true)
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    /// Upstream's path text: `.spec.replicas`, `.spec.containers[name="web"].image`.
    pub field: String,
}

/// Upstream's text of a path of field keys.
pub fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for key in path {
        if let Some(field) = key.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(keys) = key.strip_prefix("k:") {
            let parsed: BTreeMap<String, Value> = serde_json::from_str(keys).unwrap_or_default();
            let parts: Vec<String> = parsed.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = key.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// Applies `applied` (the manager's whole configuration) to `current` (`None`: the object
/// is being created): the merged object with its managed fields, or the conflicts.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    writer: &Writer<'_>,
    force: bool,
    schema: Schema<'_>,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = current.map(entries_of).unwrap_or_default();
    let applied_set = scoped(fields_of(applied, schema), writer.scope, writer.has_status);
    let subresource = writer.subresource();
    let mine = |e: &Entry| e.same_slot(writer.manager, "Apply", subresource);
    let mut conflicts = Vec::new();
    let mut taken = FieldSet::default();
    if let Some(current) = current {
        for path in applied_set.members() {
            let Some(have) = value_at(current, &path, schema) else {
                continue;
            };
            let Some(want) = value_at(applied, &path, schema) else {
                continue;
            };
            // Items and objects conflict through their fields, not as a whole.
            if have == want || (path.last().is_some_and(|k| !k.starts_with("f:")) && have.is_object()) {
                continue;
            }
            for entry in entries.iter().filter(|e| !mine(e) && e.fields.contains(&path)) {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    api_version: entry.api_version.clone(),
                    field: path_text(&path),
                });
                taken.insert(&path);
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for entry in entries.iter_mut().filter(|e| !mine(e)) {
        entry.fields.subtract(&taken);
    }
    let previous = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut merged = current.cloned().unwrap_or_else(|| json!({}));
    merge(&mut merged, applied, schema);
    // What this manager applied before and no longer applies goes, unless others own it.
    let mut others = FieldSet::default();
    for entry in entries.iter().filter(|e| !mine(e)) {
        others.union(&entry.fields);
    }
    let mut dropped = previous;
    dropped.subtract(&applied_set);
    dropped.subtract(&others);
    let mut kept = others;
    kept.union(&applied_set);
    let mut dropped_paths = dropped.members();
    // Shallowest first; what lies under a removed field or item goes with it.
    dropped_paths.sort_by_key(Vec::len);
    let mut removed: Vec<Vec<String>> = Vec::new();
    for path in dropped_paths {
        // A map, struct or item some manager still owns a field of stays (upstream's
        // addBackOwnedItems): a `.` dropped alone takes nothing with it.
        if removed.iter().any(|r| path.starts_with(r)) || kept.any_within(&path) {
            continue;
        }
        remove_at(&mut merged, &path, schema);
        removed.push(path);
    }
    entries.retain(|e| !mine(e));
    entries.push(Entry {
        manager: writer.manager.to_string(),
        operation: "Apply".into(),
        api_version: writer.api_version.to_string(),
        time: writer.time.to_string(),
        subresource: subresource.to_string(),
        fields: applied_set,
    });
    set_entries(&mut merged, &entries);
    Ok(merged)
}

/// Typing for kinds without published schemas (custom resources): maps merge, lists are atomic.
pub fn untyped(all: &Map<String, Value>) -> Schema<'_> {
    Schema::untyped(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> &'static Map<String, Value> {
        crate::schemas::all()
    }

    fn deployment() -> Schema<'static> {
        Schema::named(schemas(), "io.k8s.api.apps.v1.Deployment")
    }

    fn writer(manager: &'static str) -> Writer<'static> {
        Writer {
            manager,
            api_version: "apps/v1",
            time: "2026-11-23T12:00:00Z",
            scope: Scope::Main,
            has_status: true,
        }
    }

    fn config(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    /// What the walks must find: every field of `new` looked up from the root in both
    /// objects, and every field of `old` looked up in `new`'s fields.
    fn reference_diff(old: &Value, new: &Value, schema: Schema<'_>) -> (FieldSet, FieldSet) {
        let new_set = fields_of(new, schema);
        let old_set = fields_of(old, schema);
        let mut changed = FieldSet::default();
        let mut removed = FieldSet::default();
        for path in new_set.members() {
            let item = path.last().is_some_and(|k| !k.starts_with("f:"));
            let differs = if item {
                value_at(old, &path, schema).is_none()
            } else {
                value_at(old, &path, schema) != value_at(new, &path, schema)
            };
            if differs {
                changed.insert(&path);
            }
        }
        for path in old_set.members() {
            if !new_set.contains(&path) {
                removed.insert(&path);
            }
        }
        // Nodes with fields of their own, where the other object (as its Go type sees
        // it) lacks them.
        for (set, other, out) in [(&new_set, old, &mut changed), (&old_set, new, &mut removed)] {
            let mut nodes = Vec::new();
            inner_nodes(set, &mut Vec::new(), &mut nodes);
            for path in nodes {
                if !present_at(Some(other), &path, schema, true) {
                    out.insert(&path);
                }
            }
        }
        (changed, removed)
    }

    /// The paths of the fields (not list items) in `set` that hold fields of their own.
    fn inner_nodes(set: &FieldSet, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (key, child) in &set.children {
            prefix.push(key.clone());
            if key.starts_with("f:") && !child.children.is_empty() {
                out.push(prefix.clone());
            }
            inner_nodes(child, prefix, out);
            prefix.pop();
        }
    }

    /// Whether `value` has the node at `path`, counting what upstream's Go type always
    /// writes below a node it has.
    fn present_at(value: Option<&Value>, path: &[String], schema: Schema<'_>, present: bool) -> bool {
        let Some((head, rest)) = path.split_first() else {
            return present;
        };
        if let Some(field) = head.strip_prefix("f:") {
            let there = value.and_then(|v| v.get(field));
            let here = there.is_some() || (present && schema.always_written()(field));
            return present_at(there, rest, schema.child(field), here);
        }
        let list = schema.list_type();
        let item = value.and_then(Value::as_array).and_then(|items| {
            items
                .iter()
                .find(|i| item_key(i, &list).as_deref() == Some(head.as_str()))
        });
        present_at(item, rest, schema.items(), item.is_some())
    }

    #[test]
    fn a_create_is_encoded_as_its_field_set_would_be() {
        let pod_schema = Schema::named(schemas(), "io.k8s.api.core.v1.Pod");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u", "creationTimestamp": null,
                "labels": {"app": "web", "tier": "front"}, "annotations": {},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "r1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "nginx", "args": ["a", "b"],
                    "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 53, "protocol": "UDP"}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                    "resources": {"requests": {"cpu": "100m"}}}],
                "tolerations": [{"key": "k", "operator": "Exists"}], "nodeSelector": {"zone": "a"},
                "volumes": [{"name": "v", "emptyDir": {}}], "finalizers": []},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}});
        let metadata_only = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "uid": "u"}});
        let empty_metadata = json!({"kind": "Pod", "metadata": {}, "spec": {"containers": []}});
        let deployment_schema = Schema::named(schemas(), "io.k8s.api.apps.v1.Deployment");
        let deployment = json!({"metadata": {"name": "d", "generateName": "d-"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "d"}}, "strategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        for (object, schema) in [
            (&pod, pod_schema),
            (&metadata_only, pod_schema),
            (&empty_metadata, pod_schema),
            (&deployment, deployment_schema),
        ] {
            for (scope, has_status) in [(Scope::Main, true), (Scope::Main, false), (Scope::Scale, true)] {
                let writer = Writer {
                    manager: "m",
                    api_version: "v1",
                    time: "t",
                    scope,
                    has_status,
                };
                let set = field_diff(object, None, schema, Compare::Changed, true);
                let walked = scoped(set, scope, has_status).to_fields_v1();
                let direct = Value::Object(created_fields_v1(object, schema, |key| writer.records(key)));
                assert_eq!(direct, walked, "{object} {scope:?} {has_status}");
            }
        }
    }

    #[test]
    fn dots_mark_the_nodes_upstreams_go_types_lack() {
        let schema = Schema::named(schemas(), "io.k8s.api.apps.v1.Deployment");
        let deployment = json!({"metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"name": "nginx", "image": "nginx", "resources": {},
                                    "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
                    "dnsPolicy": "ClusterFirst", "securityContext": {}}}}});
        let created = Value::Object(created_fields_v1(&deployment, schema, |_| true));
        // As `kubectl create deployment` leaves it upstream: maps, lists, pointer structs
        // and list items have a `.`; plain structs (spec, strategy, template) and fields
        // Go always writes (containers) do not.
        assert_eq!(
            created,
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {},
                    "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}}, "f:type": {}},
                    "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {
                        "f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {},
                            "f:ports": {".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}":
                                {".": {}, "f:containerPort": {}, "f:protocol": {}}},
                            "f:resources": {}}},
                        "f:dnsPolicy": {}, "f:securityContext": {}}}}})
        );
        // A first status write: the plain status struct was there, its conditions not.
        let mut with_status = deployment.clone();
        with_status["status"] = json!({"replicas": 1, "conditions": [{"type": "Available", "status": "True"}]});
        assert_eq!(
            changed_fields(Some(&deployment), &with_status, schema).to_fields_v1(),
            json!({"f:status": {"f:replicas": {}, "f:conditions": {".": {},
                "k:{\"type\":\"Available\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
        );
        // A changed item is no new item; a removed map goes with its `.`.
        let mut edited = deployment.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        edited["metadata"].as_object_mut().unwrap().remove("labels");
        assert_eq!(
            changed_fields(Some(&deployment), &edited, schema).to_fields_v1(),
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {"f:image": {}}}}}}})
        );
        assert_eq!(
            removed_fields(&deployment, Some(&edited), schema).to_fields_v1(),
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
        );
    }

    #[test]
    fn one_walk_finds_what_lookups_from_the_root_find() {
        let pod = Schema::named(schemas(), "io.k8s.api.core.v1.Pod");
        let base = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "web", "tier": "a"}, "annotations": {}},
            "spec": {"containers": [
                {"name": "web", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}], "args": ["x", "y"]},
                {"name": "side", "image": "busybox"}],
                "nodeSelector": {"zone": "dmz"}, "tolerations": [{"key": "k", "operator": "Exists"}],
                "finalizers": ["a"]},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}});
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<Edit> = vec![
            Box::new(|_| {}),
            Box::new(|v| v["spec"]["containers"][0]["image"] = json!("nginx:2")),
            Box::new(|v| {
                v["spec"]["containers"].as_array_mut().unwrap().remove(1);
            }),
            Box::new(|v| {
                v["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "new", "image": "x"}))
            }),
            Box::new(|v| v["spec"]["containers"][0]["ports"] = json!([])),
            Box::new(|v| v["spec"]["containers"][0]["env"][0]["value"] = json!("2")),
            Box::new(|v| v["spec"]["containers"][0]["args"] = json!(["y"])),
            Box::new(|v| v["metadata"]["labels"] = json!({"app": "db"})),
            Box::new(|v| v["metadata"]["labels"] = json!({})),
            Box::new(|v| v["metadata"]["annotations"] = json!({"a": "b"})),
            Box::new(|v| {
                v["metadata"].as_object_mut().unwrap().remove("labels");
            }),
            Box::new(|v| v["spec"]["nodeSelector"] = json!("not a map")),
            Box::new(|v| v["spec"]["tolerations"] = json!([{"key": "k", "operator": "Equal", "value": "v"}])),
            Box::new(|v| {
                v["status"] = json!({"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]})
            }),
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("spec");
            }),
            Box::new(|v| v["spec"]["containers"] = json!({"name": "web"})),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut new = base.clone();
            edit(&mut new);
            for (old, new) in [(&base, &new), (&new, &base)] {
                let (changed, removed) = reference_diff(old, new, pod);
                assert_eq!(changed_fields(Some(old), new, pod), changed, "edit {i}: changed");
                assert_eq!(removed_fields(old, Some(new), pod), removed, "edit {i}: removed");
                // Each scope's walk of its own part records what the whole walk, scoped,
                // records.
                for scope in [Scope::Main, Scope::Status, Scope::Scale] {
                    let w = Writer { scope, ..writer("w") };
                    let keep = |k: &str| w.records(k);
                    for (compare, this, other, whole) in [
                        (Compare::Changed, new, old, &changed),
                        (Compare::Removed, old, new, &removed),
                    ] {
                        let walked = field_diff_where(this, Some(other), pod, compare, keep, true);
                        assert_eq!(
                            scoped(walked, scope, true),
                            scoped(whole.clone(), scope, true),
                            "edit {i}: {compare:?} by {scope:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn field_sets_read_and_write_upstreams_form() {
        let set = scoped(fields_of(&config(2, "nginx"), deployment()), Scope::Main, true);
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert_eq!(v1["f:spec"]["f:selector"], json!({}), "an atomic map is one field");
        assert!(
            v1["f:metadata"].get("f:name").is_none(),
            "the server's fields are no manager's"
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
        let path = vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(path_text(&path), ".spec.template.spec.containers[name=\"web\"].image");
    }

    #[test]
    fn apply_conflicts_with_other_managers_unless_forced() {
        let created = apply(None, &config(2, "nginx:1.26"), &writer("alice"), false, deployment()).unwrap();
        // Bob changes the replicas with an update.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&created), &mut scaled, &writer("bob"), deployment());
        let entries = entries_of(&scaled);
        assert_eq!(entries.len(), 2);
        assert!(
            !entries[0].fields.contains(&["f:spec".into(), "f:replicas".into()]),
            "bob took it"
        );
        // Alice applies her replicas again: a conflict with bob.
        let err = apply(
            Some(&scaled),
            &config(2, "nginx:1.27"),
            &writer("alice"),
            false,
            deployment(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            [Conflict {
                manager: "bob".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        // The same value is no conflict (shared), forcing takes the field.
        let shared = apply(
            Some(&scaled),
            &config(5, "nginx:1.27"),
            &writer("alice"),
            false,
            deployment(),
        )
        .unwrap();
        assert_eq!(
            shared["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.27"
        );
        let forced = apply(
            Some(&scaled),
            &config(3, "nginx:1.27"),
            &writer("alice"),
            true,
            deployment(),
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert_eq!(entries_of(&forced).len(), 1, "bob owns nothing any more");
    }

    #[test]
    fn updates_reencode_only_the_entries_they_change() {
        let created = apply(None, &config(2, "nginx:1.26"), &writer("alice"), false, deployment()).unwrap();
        // An entry in an encoding of its own (a "." where no children follow), left alone by
        // writes that do not touch its fields.
        let mut base = created.clone();
        let carol = json!({"manager": "carol", "operation": "Update", "apiVersion": "apps/v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:note": {".": {}}}}}});
        base["metadata"]["annotations"] = json!({"note": "hi"});
        base["metadata"]["managedFields"]
            .as_array_mut()
            .unwrap()
            .push(carol.clone());
        let mut scaled = base.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&base), &mut scaled, &writer("bob"), deployment());
        let list = scaled["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[1], carol, "untouched: kept as stored");
        assert_eq!(list[2]["manager"], "bob");
        assert_eq!(list[2]["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        assert!(
            !entries_of(&scaled)[0]
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()]),
            "alice lost the field bob changed"
        );
        // Removing carol's only field drops her entry; bob's own entry grows in place.
        let mut unnoted = scaled.clone();
        unnoted["metadata"].as_object_mut().unwrap().remove("annotations");
        unnoted["spec"]["paused"] = json!(true);
        record_update(Some(&scaled), &mut unnoted, &writer("bob"), deployment());
        let managers: Vec<&str> = unnoted["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["alice", "bob"]);
        assert_eq!(
            unnoted["metadata"]["managedFields"][1]["fieldsV1"],
            json!({"f:spec": {"f:paused": {}, "f:replicas": {}}})
        );
        // Not sent at all (an update that leaves managedFields out): the stored record goes on.
        let mut without = scaled.clone();
        without["metadata"].as_object_mut().unwrap().remove("managedFields");
        record_update(Some(&scaled), &mut without, &writer("bob"), deployment());
        assert_eq!(
            without["metadata"]["managedFields"],
            scaled["metadata"]["managedFields"]
        );
    }

    #[test]
    fn sets_merge_by_value_and_atomic_lists_are_replaced_whole() {
        let pod = Schema::named(schemas(), "io.k8s.api.core.v1.Pod");
        let pod_writer = Writer {
            api_version: "v1",
            ..writer("alice")
        };
        let first = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": ["a/x"]},
            "spec": {"containers": [{"name": "c", "image": "x"}], "tolerations": [{"key": "k1", "operator": "Exists"}]}});
        let created = apply(None, &first, &pod_writer, false, pod).unwrap();
        let fields = entries_of(&created)[0].fields.to_fields_v1();
        assert_eq!(fields["f:metadata"]["f:finalizers"], json!({"v:\"a/x\"": {}}));
        assert_eq!(
            fields["f:spec"]["f:tolerations"],
            json!({}),
            "an atomic list is one field"
        );
        let bob = Writer {
            api_version: "v1",
            ..writer("bob")
        };
        let second = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": ["b/y"]},
            "spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}});
        let err = apply(Some(&created), &second, &bob, false, pod).unwrap_err();
        assert_eq!(err[0].field, ".spec.tolerations");
        let merged = apply(Some(&created), &second, &bob, true, pod).unwrap();
        assert_eq!(merged["metadata"]["finalizers"], json!(["a/x", "b/y"]), "a set merges");
        assert_eq!(
            merged["spec"]["tolerations"],
            json!([{"key": "k2", "operator": "Exists"}])
        );
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_others_own_them() {
        let mut with_label = config(2, "nginx");
        with_label["metadata"]["labels"] = json!({"tier": "web", "team": "a"});
        let created = apply(None, &with_label, &writer("alice"), false, deployment()).unwrap();
        let mut second = config(2, "nginx");
        second["metadata"]["labels"] = json!({"tier": "web"});
        let applied = apply(Some(&created), &second, &writer("alice"), false, deployment()).unwrap();
        assert_eq!(applied["metadata"]["labels"], json!({"tier": "web"}));
        // A container applied by two managers stays when one stops applying it.
        let mut two = config(2, "nginx");
        two["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "web", "image": "nginx"}, {"name": "log", "image": "busybox"}]);
        let both = apply(Some(&applied), &two, &writer("bob"), false, deployment()).unwrap();
        let dropped = apply(Some(&both), &config(2, "nginx"), &writer("bob"), false, deployment()).unwrap();
        let names: Vec<&str> = dropped["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["web"],
            "the sidecar only bob applied went; web alice applies too"
        );
    }

    #[test]
    fn list_items_lacking_a_key_field_are_keyed_by_its_default() {
        let service = Schema::named(schemas(), "io.k8s.api.core.v1.Service");
        let w = Writer {
            api_version: "v1",
            ..writer("kubectl")
        };
        // As stored after a client-side apply of `ports: [{port: 3306}]`: defaulted.
        let live = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 3306, "protocol": "TCP", "targetPort": 3306}]}});
        let applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 3306}]}});
        let merged = apply(Some(&live), &applied, &w, true, service).unwrap();
        assert_eq!(
            merged["spec"]["ports"],
            json!([{"port": 3306, "protocol": "TCP", "targetPort": 3306}]),
            "the same item, not a second one"
        );
        let fields = entries_of(&merged)[0].fields.to_fields_v1();
        assert_eq!(
            fields["f:spec"]["f:ports"],
            json!({"k:{\"port\":3306,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}})
        );
    }

    #[test]
    fn a_dot_no_longer_applied_takes_nothing_still_owned_with_it() {
        // kubectl's server-side apply migration hands the client-side apply entry, with its
        // `.` members, to the applier; applying the same manifest again drops the `.` of
        // maps whose entries the applier still owns, and must keep the maps.
        let mut object = config(2, "nginx");
        object["metadata"]["labels"] = json!({"app": "web"});
        let created = apply(None, &object, &writer("kubectl"), false, deployment()).unwrap();
        let mut migrated = created.clone();
        let update_fields = Value::Object(created_fields_v1(&object, deployment(), |_| true));
        assert_eq!(update_fields["f:metadata"]["f:labels"]["."], json!({}));
        migrated["metadata"]["managedFields"][0]["fieldsV1"] = update_fields;
        let again = apply(Some(&migrated), &object, &writer("kubectl"), false, deployment()).unwrap();
        assert_eq!(again["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(again["spec"]["template"]["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(again["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
    }
}
