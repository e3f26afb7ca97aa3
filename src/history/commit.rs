//! Group commit of new jobs: submits that arrive together share one transaction, so a commit (an
//! fsync) is paid per group rather than per job, and concurrent single submits do not queue up
//! behind each other's commits. A group forms while the previous ones are being committed.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sea_orm::{DatabaseConnection, DbErr, EntityTrait, TransactionTrait};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::entity::{jobs, labels};

/// The most jobs one group takes.
const MAX_ROWS: usize = 5000;

struct Request {
    rows: Vec<jobs::Model>,
    done: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Request>,
}

impl Handle {
    /// Hands the rows to the committer: they go in the next group. The answer says when (and
    /// whether) they were committed; a caller may stop waiting for it and pick it up later.
    pub fn insert(&self, rows: Vec<jobs::Model>) -> Committed {
        let (done, answer) = oneshot::channel();
        // A committer that stopped drops the request, and with it the sender: the answer says so.
        let _ = self.tx.send(Request { rows, done });
        Committed(answer)
    }
}

/// Whether a group with the rows was committed.
pub struct Committed(oneshot::Receiver<Result<(), String>>);

impl Future for Committed {
    type Output = Result<(), DbErr>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|answer| match answer {
            Ok(result) => result.map_err(DbErr::Custom),
            Err(_) => Err(DbErr::Custom("the history committer stopped".into())),
        })
    }
}

/// `in_flight` groups may commit at once (1 for SQLite, which has one writer anyway).
pub fn spawn(db: DatabaseConnection, in_flight: usize) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(db, rx, in_flight));
    Handle { tx }
}

async fn run(db: DatabaseConnection, mut rx: mpsc::UnboundedReceiver<Request>, in_flight: usize) {
    let permits = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Everything that arrived while the earlier groups committed joins this one.
        let mut rows = first.rows.len();
        let mut group = vec![first];
        while rows < MAX_ROWS {
            let Ok(next) = rx.try_recv() else { break };
            rows += next.rows.len();
            group.push(next);
        }
        let db = db.clone();
        tokio::spawn(async move {
            let (rows, waiting): (Vec<_>, Vec<_>) =
                group.into_iter().map(|r| (r.rows, r.done)).unzip();
            let result = insert(&db, rows.into_iter().flatten().collect())
                .await
                .map_err(|e| e.to_string());
            for done in waiting {
                let _ = done.send(result.clone());
            }
            drop(permit);
        });
    }
}

/// Inserts jobs and their labels in one transaction.
async fn insert(db: &DatabaseConnection, rows: Vec<jobs::Model>) -> Result<(), DbErr> {
    let labels: Vec<labels::ActiveModel> = rows
        .iter()
        .flat_map(|row| {
            let map: BTreeMap<String, String> =
                serde_json::from_str(&row.labels).unwrap_or_default();
            map.into_iter().map(|(key, value)| {
                labels::ActiveModel::from(labels::Model {
                    job_id: row.id.clone(),
                    key,
                    value,
                })
            })
        })
        .collect();
    let rows: Vec<jobs::ActiveModel> = rows.into_iter().map(Into::into).collect();
    let txn = db.begin().await?;
    // Well under both backends' limits on bound parameters per statement.
    for chunk in rows.chunks(500) {
        jobs::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }
    for chunk in labels.chunks(2000) {
        labels::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await
}
