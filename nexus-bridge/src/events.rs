//! The event stream of `GET /events`: run events (`started`,
//! `node_finished`, `finished`, `failed`) and model changes (`created`,
//! `updated`, `deleted`), each with an id, kept in a bounded buffer for
//! `Last-Event-ID`, and on PostgreSQL shared between instances.
//!
//! Every event is JSON with its `id`, `event`, `tenant` and `workflow`
//! (the run's); a model change adds `model`, `record_id` (or, for a bulk
//! change that reports none, `count`), `run_id`, `node`, and the record
//! itself for the models [`event_records`](crate::NexusBuilder::event_records)
//! names (sensitive fields as `"***"`).
//!
//! Ids read `<instance>-<n>`: the instance is random per process, `n`
//! counts up. A client reconnecting with `Last-Event-ID` gets what this
//! instance published after that id while it is still in the buffer (all
//! the buffer holds when the id is older than that); an id of another
//! instance (or an earlier process) replays nothing, since this instance
//! cannot know where that stream was.
//!
//! On PostgreSQL every instance publishes its events with `NOTIFY` (channel
//! `nexus_events`, batched, each payload under PostgreSQL's 8000-byte cap: a
//! record too large to fit travels as `"record_omitted": true`) and
//! listens for the others', which it publishes to its own subscribers under
//! ids of its own. Events sent while an instance's listening connection is
//! down are missed by it.

use dataflow::{DataFlow, Result};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL `NOTIFY` channel instances share events on.
const CHANNEL: &str = "nexus_events";

/// The largest `NOTIFY` payload sent (PostgreSQL refuses 8000 and more).
const MAX_PAYLOAD: usize = 7_900;

/// What an event is about, which decides who may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A run of this workflow.
    Run(String),
    /// A change to a record of this model.
    Model(String),
}

/// One published event.
#[derive(Debug)]
pub(crate) struct Event {
    /// `<instance>-<n>`, the SSE `id`.
    pub(crate) id: String,
    seq: u64,
    /// The tenant of the run it comes from.
    pub(crate) tenant: Option<String>,
    pub(crate) scope: Scope,
    /// The event as JSON text (with its `id`).
    pub(crate) data: String,
}

/// What the scope of an event body is: its model for a change, else its workflow.
fn scope_of(body: &Map<String, Value>) -> Scope {
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    match text("event") {
        "created" | "updated" | "deleted" => Scope::Model(text("model").to_string()),
        _ => Scope::Run(text("workflow").to_string()),
    }
}

struct Buffer {
    next: u64,
    kept: VecDeque<Arc<Event>>,
}

/// The events of one application instance.
pub(crate) struct Events {
    instance: String,
    sender: broadcast::Sender<Arc<Event>>,
    buffer: Mutex<Buffer>,
    capacity: usize,
    /// With PostgreSQL, once serving: events for the other instances.
    outbox: OnceLock<mpsc::UnboundedSender<Map<String, Value>>>,
}

impl Events {
    /// Keeps the last `capacity` events for replay.
    pub(crate) fn new(capacity: usize) -> Events {
        let instance = crate::auth::jwt::random_bytes::<4>()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_else(|_| format!("{:08x}", std::process::id()));
        Events {
            instance,
            sender: broadcast::channel(1024).0,
            buffer: Mutex::new(Buffer {
                next: 1,
                kept: VecDeque::with_capacity(capacity.min(4096)),
            }),
            capacity,
            outbox: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `body` (with `event`, `tenant`, `workflow`, ...) to this
    /// instance's subscribers and, on PostgreSQL, the other instances'.
    pub(crate) fn publish(&self, body: Map<String, Value>) {
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.send(body.clone());
        }
        self.publish_here(body);
    }

    fn publish_here(&self, mut body: Map<String, Value>) {
        let tenant = body
            .get("tenant")
            .and_then(Value::as_str)
            .map(str::to_string);
        let scope = scope_of(&body);
        let mut buffer = self.lock();
        let seq = buffer.next;
        buffer.next += 1;
        let id = format!("{}-{seq}", self.instance);
        body.insert("id".into(), Value::String(id.clone()));
        let event = Arc::new(Event {
            id,
            seq,
            tenant,
            scope,
            data: Value::Object(body).to_string(),
        });
        if buffer.kept.len() == self.capacity {
            buffer.kept.pop_front();
        }
        buffer.kept.push_back(event.clone());
        // Under the lock: a subscriber sees each event once, either in its
        // replay or on its receiver.
        let _ = self.sender.send(event);
    }

    /// A new subscription: the events after `last_event_id` still kept
    /// (see the module doc), then every event from now on.
    pub(crate) fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let buffer = self.lock();
        let receiver = self.sender.subscribe();
        let after = last_event_id
            .and_then(|id| id.rsplit_once('-'))
            .filter(|(instance, _)| *instance == self.instance)
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let replay = match after {
            Some(n) => buffer.kept.iter().filter(|e| e.seq > n).cloned().collect(),
            None => Vec::new(),
        };
        (replay, receiver)
    }

    /// On PostgreSQL: starts sending this instance's events to the others
    /// and receiving theirs (once; until `shutdown`). Nothing on SQLite.
    pub(crate) fn connect(
        self: &Arc<Self>,
        db: &DataFlow,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        if self.outbox.get().is_some() {
            return Ok(());
        }
        let Some(mut incoming) = db.listen(CHANNEL)? else {
            return Ok(());
        };
        let (tx, mut outgoing) = mpsc::unbounded_channel();
        if self.outbox.set(tx).is_err() {
            return Ok(());
        }
        let (me, stop) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let payload = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = incoming.recv() => match p { Some(p) => p, None => return },
                };
                me.receive(&payload);
            }
        });
        let (me, db, stop) = (self.clone(), db.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = outgoing.recv() => match e { Some(e) => e, None => return },
                };
                let mut batch = vec![first];
                while let Ok(e) = outgoing.try_recv() {
                    batch.push(e);
                }
                for payload in pack(&me.instance, batch) {
                    // A lost notification is a missed event, never a failed run.
                    let _ = db.notify(CHANNEL, &payload).await;
                }
            }
        });
        Ok(())
    }

    /// Publishes here what another instance sent (its own come back too: skipped).
    fn receive(&self, payload: &str) {
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        if m.get("from").and_then(Value::as_str) == Some(self.instance.as_str()) {
            return;
        }
        let Some(Value::Array(events)) = m.remove("events") else {
            return;
        };
        for e in events {
            if let Value::Object(body) = e {
                self.publish_here(body);
            }
        }
    }
}

/// A model node of a registered workflow that writes: where its change
/// events come from.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    /// The node's id in the workflow.
    pub(crate) node: String,
    pub(crate) model: &'static dataflow::ModelSchema,
    pub(crate) op: dataflow::schema::Op,
}

impl Write {
    /// The writing model nodes of `workflow`.
    pub(crate) fn of(db: &DataFlow, workflow: &dataflow::Workflow) -> Vec<Write> {
        let mut writes = Vec::new();
        for node in &workflow.spec().nodes {
            for m in db.models() {
                if let Some((_, op)) = m
                    .node_names()
                    .find(|(name, op)| *name == node.node_type && op.writes())
                {
                    writes.push(Write {
                        node: node.id.clone(),
                        model: m,
                        op,
                    });
                }
            }
        }
        writes
    }
}

/// The change events (bodies without workflow, tenant and run id) that a
/// write node's output `out` reports; with `records`, the record itself
/// (its sensitive fields as `"***"`).
pub(crate) fn changes(write: &Write, out: &Value, records: bool) -> Vec<Map<String, Value>> {
    use dataflow::schema::Op;
    let m = write.model;
    let pk = m.primary_key().name;
    let event = |kind: &str, id: Value, record: Option<&Value>| {
        let mut body = Map::new();
        body.insert("event".into(), Value::from(kind));
        body.insert("model".into(), Value::from(m.name));
        body.insert("record_id".into(), id);
        body.insert("node".into(), Value::from(write.node.clone()));
        if let (true, Some(Value::Object(r))) = (records, record) {
            let mut r = r.clone();
            for f in m.fields.iter().filter(|f| f.sensitive) {
                if let Some(v) = r.get_mut(f.name) {
                    *v = Value::from("***");
                }
            }
            body.insert("record".into(), Value::Object(r));
        }
        body
    };
    let counted = |kind: &str, n: &Value| {
        let mut body = event(kind, Value::Null, None);
        body.insert("count".into(), n.clone());
        body
    };
    let nonzero = |v: &Value| v.as_u64().is_some_and(|n| n > 0);
    match write.op {
        Op::Create => vec![event("created", out[pk].clone(), Some(out))],
        Op::Update => vec![event("updated", out[pk].clone(), Some(out))],
        Op::Delete => vec![event("deleted", out["id"].clone(), None)],
        Op::Upsert => {
            let kind = if out["action"] == "created" {
                "created"
            } else {
                "updated"
            };
            let record = &out["record"];
            vec![event(kind, record[pk].clone(), Some(record))]
        }
        Op::BulkCreate => out["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|id| event("created", id.clone(), None))
            .collect(),
        Op::BulkUpdate if nonzero(&out["updated"]) => vec![counted("updated", &out["updated"])],
        Op::BulkDelete if nonzero(&out["deleted"]) => vec![counted("deleted", &out["deleted"])],
        Op::BulkUpsert => [("created", &out["inserted"]), ("updated", &out["updated"])]
            .into_iter()
            .filter(|(_, n)| nonzero(n))
            .map(|(kind, n)| counted(kind, n))
            .collect(),
        _ => Vec::new(),
    }
}

/// Packs events into `NOTIFY` payloads under [`MAX_PAYLOAD`] bytes:
/// `{"from": instance, "events": [...]}`; a record that does not fit is
/// left out (`record_omitted`), and an event that still does not is dropped.
fn pack(instance: &str, batch: Vec<Map<String, Value>>) -> Vec<String> {
    let envelope = json!({"from": instance, "events": []}).to_string().len();
    let room = MAX_PAYLOAD - envelope;
    let mut payloads = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut size = 0;
    let flush = |current: &mut Vec<String>, payloads: &mut Vec<String>| {
        if !current.is_empty() {
            payloads.push(format!(
                "{{\"from\":{},\"events\":[{}]}}",
                Value::from(instance),
                current.join(",")
            ));
            current.clear();
        }
    };
    for mut body in batch {
        let mut text = Value::Object(body.clone()).to_string();
        if text.len() > room && body.remove("record").is_some() {
            body.insert("record_omitted".into(), Value::Bool(true));
            text = Value::Object(body).to_string();
        }
        if text.len() > room {
            continue;
        }
        if size + text.len() + 1 > room {
            flush(&mut current, &mut payloads);
            size = 0;
        }
        size += text.len() + 1;
        current.push(text);
    }
    flush(&mut current, &mut payloads);
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(event: &str, tenant: &str) -> Map<String, Value> {
        json!({"event": event, "tenant": tenant, "workflow": "w", "model": "User"})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn last_event_id_replays_what_followed_within_the_buffer() {
        let events = Events::new(3);
        for i in 0..5 {
            events.publish(body(if i % 2 == 0 { "created" } else { "started" }, "t"));
        }
        let kept: Vec<u64> = events.lock().kept.iter().map(|e| e.seq).collect();
        assert_eq!(kept, [3, 4, 5], "bounded");
        let id = |n: u64| format!("{}-{n}", events.instance);
        let seqs = |(replay, _): (Vec<Arc<Event>>, _)| -> Vec<u64> {
            replay.iter().map(|e| e.seq).collect()
        };
        assert_eq!(seqs(events.subscribe(Some(&id(3)))), [4, 5]);
        assert_eq!(
            seqs(events.subscribe(Some(&id(1)))),
            [3, 4, 5],
            "older: all kept"
        );
        assert!(
            seqs(events.subscribe(Some("ffffffff-1"))).is_empty(),
            "another instance"
        );
        assert!(seqs(events.subscribe(None)).is_empty());
        let (_, mut live) = events.subscribe(None);
        events.publish(body("deleted", "t"));
        let e = live.try_recv().unwrap();
        assert_eq!((e.seq, &e.scope), (6, &Scope::Model("User".into())));
        assert!(e.data.contains(&format!("\"id\":\"{}\"", id(6))));
    }

    #[test]
    fn payloads_stay_under_the_notify_limit() {
        let mut big = body("created", "t");
        big.insert("record".into(), json!({"blob": "x".repeat(20_000)}));
        let small: Vec<Map<String, Value>> = (0..200).map(|_| body("started", "t")).collect();
        let payloads = pack("abcd", std::iter::once(big).chain(small).collect());
        assert!(payloads.len() > 1);
        let mut count = 0;
        for p in &payloads {
            assert!(p.len() < 8000, "{}", p.len());
            let v: Value = serde_json::from_str(p).unwrap();
            count += v["events"].as_array().unwrap().len();
        }
        assert_eq!(count, 201);
        let first: Value = serde_json::from_str(&payloads[0]).unwrap();
        assert_eq!(first["events"][0]["record_omitted"], true);
    }
}
