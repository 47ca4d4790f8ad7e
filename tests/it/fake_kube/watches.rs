//! WATCH: history replay from a resourceVersion, live changes filtered as the watch cache does,
//! and bookmarks.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, MutexGuard},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::Response,
};
use futures::{SinkExt, channel::mpsc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use serde_json::{Value, json};

use super::{
    Inner, Shared, WATCH_CAP, bad_request,
    resources::{Filter, partial},
    store::{Change, ResType},
};

/// WATCH from `resourceVersion` (or the current state), then live changes until `timeoutSeconds`
/// (at most [`WATCH_CAP`]) or the fake stops.
pub(super) fn watch(
    shared: &Arc<Shared>,
    inner: MutexGuard<'_, Inner>,
    rt: ResType,
    mut filter: Filter,
    name: Option<&str>,
    meta: bool,
    query: &HashMap<String, String>,
) -> Response {
    // WATCH. The history snapshot and the broadcast subscription are taken under one lock, so no
    // change is lost or sent twice.
    if let Some(name) = name {
        filter.fields.push(("/metadata/name", true, name.to_owned()));
    }
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(format!("invalid resource version {rv:?}")),
        },
    };
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(WATCH_CAP, |t| Duration::from_secs(t).min(WATCH_CAP));
    let store = inner.objects.get(&(rt.group.clone(), rt.plural.clone()));
    let mut lines: Vec<String> = Vec::new();
    if since.is_none() || initial_events {
        // "Start at most recent / any": synthetic ADDED for the current state.
        let current = store
            .into_iter()
            .flat_map(|s| s.values())
            .filter(|o| filter.matches(o));
        lines.extend(current.map(|o| event_line(WatchEvent::Added(o.clone()), meta)));
    } else if let Some(since) = since {
        let start = inner.history.partition_point(|c| c.rv <= since);
        lines.extend(
            inner.history[start..]
                .iter()
                .filter_map(|c| change_line(c, &rt, &filter, meta)),
        );
    }
    let mut last_rv = inner.rv;
    if initial_events && bookmarks {
        lines.push(bookmark_line(&rt, meta, last_rv, true));
    }
    let mut changes = shared.changes.subscribe();
    let mut shutdown = shared.shutdown.clone();
    drop(inner);

    let (mut tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        for line in lines {
            if tx.send(Ok(line.into())).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(Ok(bookmark_line(&rt, meta, last_rv, false).into())).await;
                    }
                    return;
                }
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
                change = changes.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        change_line(&change, &rt, &filter, meta)
                    }
                    // Lagged or closed: end the stream; the client resumes from its last version.
                    Err(_) => return,
                },
            };
            if let Some(line) = line
                && tx.send(Ok(line.into())).await.is_err()
            {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(rx))
        .expect("watch response")
}

/// The event a watch with this filter sees for `change`, as the real watch cache computes it.
fn change_line(change: &Change, rt: &ResType, filter: &Filter, meta: bool) -> Option<String> {
    if change.group != rt.group || change.plural != rt.plural {
        return None;
    }
    let was = change.prev.as_ref().is_some_and(|o| filter.matches(o));
    let event = match &change.cur {
        Some(cur) if filter.matches(cur) => {
            if was {
                WatchEvent::Modified(cur.clone())
            } else {
                WatchEvent::Added(cur.clone())
            }
        }
        _ if was => {
            // Gone, or no longer matching: DELETED with the last matching state at this version.
            let mut prev = change.prev.clone()?;
            prev["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            WatchEvent::Deleted(prev)
        }
        _ => return None,
    };
    Some(event_line(event, meta))
}

fn event_line(event: WatchEvent<Value>, meta: bool) -> String {
    let event = if meta {
        match event {
            WatchEvent::Added(o) => WatchEvent::Added(partial(&o)),
            WatchEvent::Modified(o) => WatchEvent::Modified(partial(&o)),
            WatchEvent::Deleted(o) => WatchEvent::Deleted(partial(&o)),
            other => other,
        }
    } else {
        event
    };
    serde_json::to_string(&event).expect("serialize watch event") + "\n"
}

/// Built by hand: k8s-openapi's `WatchEvent::Bookmark` omits apiVersion/kind, which the real
/// server sends and kube-core's `Bookmark` requires.
fn bookmark_line(rt: &ResType, meta: bool, rv: u64, initial_end: bool) -> String {
    let (api_version, kind) = if meta {
        ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadata".to_owned())
    } else {
        (rt.api_version(), rt.kind.clone())
    };
    let annotations = if initial_end {
        json!({"k8s.io/initial-events-end": "true"})
    } else {
        json!({})
    };
    let object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string(), "annotations": annotations}});
    json!({"type": "BOOKMARK", "object": object}).to_string() + "\n"
}
