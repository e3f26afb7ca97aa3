//! Group commit of new jobs: submits that arrive together share one transaction, so a commit (an
//! fsync) is paid per group rather than per job, and concurrent single submits do not queue up
//! behind each other's commits. Rows that find one of the `in_flight` places free and nothing
//! waiting go at once; else they join the group that waits for a place (or open one, whose
//! leader task waits), so a group forms while the earlier ones are being committed.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sea_orm::{DatabaseConnection, DbErr, EntityTrait, TransactionTrait};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::entity::{jobs, labels};

/// The most jobs one group takes.
const MAX_ROWS: usize = 5000;

type Answer = oneshot::Sender<Result<(), String>>;

struct Group {
    rows: Vec<jobs::Model>,
    answers: Vec<Answer>,
}

#[derive(Clone)]
pub struct Handle {
    db: DatabaseConnection,
    places: Arc<Semaphore>,
    /// Groups waiting for a place, oldest first; each has a leader task.
    waiting: Arc<Mutex<VecDeque<Group>>>,
}

impl Handle {
    /// `in_flight` groups may commit at once (1 for SQLite, which has one writer anyway).
    pub fn new(db: DatabaseConnection, in_flight: usize) -> Handle {
        Handle {
            db,
            places: Arc::new(Semaphore::new(in_flight)),
            waiting: Arc::default(),
        }
    }

    /// Hands the rows to be committed: at once, or in the next group. The answer says when (and
    /// whether) they were committed; a caller may stop waiting for it and pick it up later.
    pub fn insert(&self, rows: Vec<jobs::Model>) -> Committed {
        let (answer, answered) = oneshot::channel();
        // The lock guards plain bookkeeping; a panic elsewhere leaves it consistent.
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.back_mut() {
            Some(group) if group.rows.len() + rows.len() <= MAX_ROWS => {
                group.rows.extend(rows);
                group.answers.push(answer);
            }
            last => {
                let free = match last {
                    None => self.places.clone().try_acquire_owned().ok(),
                    Some(_) => None,
                };
                let group = Group {
                    rows,
                    answers: vec![answer],
                };
                match free {
                    Some(place) => {
                        tokio::spawn(commit(self.db.clone(), group, place));
                    }
                    None => {
                        waiting.push_back(group);
                        tokio::spawn(self.clone().lead());
                    }
                }
            }
        }
        Committed(answered)
    }

    /// Waits for a place, then commits the oldest waiting group.
    async fn lead(self) {
        let Ok(place) = self.places.clone().acquire_owned().await else {
            return;
        };
        let group = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if let Some(group) = group {
            commit(self.db, group, place).await;
        }
    }
}

async fn commit(db: DatabaseConnection, group: Group, place: OwnedSemaphorePermit) {
    let result = insert(&db, group.rows).await.map_err(|e| e.to_string());
    drop(place);
    for answer in group.answers {
        let _ = answer.send(result.clone());
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
    // One statement is a transaction of its own: one round trip instead of three.
    if labels.is_empty() && rows.len() <= 500 {
        return jobs::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await
            .map(drop);
    }
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
