//! Writers: live traffic through every replica while a backfill runs — rewrites of corpus
//! documents spread over the whole id range (some still queued, some claimed by a batch in
//! flight, some already backfilled), rewrites of the same document again, and new documents,
//! one at a time and in bulk. Each writer remembers what it wrote last to each id, so that a
//! test can read every document back through another replica.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Api;
use crate::cluster::{Cluster, DOCUMENTS, REPLICAS, TARGET, TEXT_CHARS, doc_id};
use crate::serial_provider::text;

/// What a writer wrote last to one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The replica the write went through.
    pub replica: usize,
    pub version: u64,
    pub text: String,
    /// A corpus document (loaded before the migration), not a new one.
    pub rewrite: bool,
}

/// What the writers did, when they stopped.
#[derive(Debug, Default)]
pub struct Report {
    /// The last write to each id, by id.
    pub last: BTreeMap<String, Written>,
    /// Writes of a corpus document that carried its target vector (a dual write): each takes
    /// the document off the backfill queue if it was there, and counts it processed.
    pub dual_rewrites: usize,
    /// Writes answered without the target model in `embedded_with`: the replica's routing
    /// had not yet seen the migration start, so the write's transaction queued the document
    /// for the backfill instead (API.md: correctness never depends on a replica's view).
    pub source_only: usize,
    /// When the last of those was sent.
    pub last_source_only: Option<Instant>,
}

/// Writers running on every replica; `stop` returns what they wrote.
pub struct Writers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Report>>,
}

impl Writers {
    /// Starts one writer per replica of `cluster`.
    pub fn start(cluster: &Cluster) -> Self {
        let stop = CancellationToken::new();
        let tasks = (0..REPLICAS)
            .map(|replica| {
                let writer = Writer {
                    replica,
                    api: cluster.api(replica).clone(),
                    report: Report::default(),
                };
                tokio::spawn(writer.run(stop.clone()))
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops every writer after its current request; what they wrote.
    pub async fn stop(self) -> Report {
        self.stop.cancel();
        let mut all = Report::default();
        for task in self.tasks {
            let report = task.await.expect("a writer did not panic");
            all.last.extend(report.last);
            all.dual_rewrites += report.dual_rewrites;
            all.source_only += report.source_only;
            all.last_source_only = all.last_source_only.max(report.last_source_only);
        }
        all
    }
}

/// One replica's writer. Writers never share an id (a corpus id `n` belongs to the writer
/// `n % REPLICAS`), so each id's last write is known without ordering writers against each
/// other.
struct Writer {
    replica: usize,
    api: Api,
    report: Report,
}

impl Writer {
    async fn run(mut self, stop: CancellationToken) -> Report {
        for round in 0usize.. {
            if stop.is_cancelled() {
                break;
            }
            self.round(round).await;
        }
        self.report
    }

    /// One round: a single rewrite; every other round, the same document rewritten again;
    /// every third, a bulk write of four rewrites and four new documents.
    async fn round(&mut self, round: usize) {
        let id = self.corpus_id(round);
        self.put(&id, round, true).await;
        if round % 2 == 1 {
            self.put(&id, round + 1_000_000, true).await;
        }
        if round % 3 == 0 {
            let mut docs: Vec<(String, bool)> = (0..4)
                .map(|k| (self.corpus_id(round * 4 + k + 7_919), true))
                .collect();
            docs.extend((0..4).map(|k| (format!("new-{}-{round:04}-{k}", self.replica), false)));
            self.bulk(&docs, round).await;
        }
    }

    /// A corpus id of this writer's, spread over the whole range.
    fn corpus_id(&self, k: usize) -> String {
        let per_writer = DOCUMENTS / REPLICAS;
        let n = (k * 2_377 + 13) % per_writer * REPLICAS + self.replica;
        doc_id(n)
    }

    fn text(&self, round: usize) -> String {
        text(&format!("write-{}", self.replica), round, TEXT_CHARS)
    }

    async fn put(&mut self, id: &str, round: usize, rewrite: bool) {
        let text = self.text(round);
        let sent = Instant::now();
        let written = self.api.put_document(id, &text).await;
        self.remember(&written, text, rewrite, sent);
    }

    async fn bulk(&mut self, docs: &[(String, bool)], round: usize) {
        let texts: Vec<(String, String)> = docs
            .iter()
            .enumerate()
            .map(|(k, (id, _))| (id.clone(), self.text(round * 10 + k + 500_000)))
            .collect();
        let sent = Instant::now();
        let results = self.api.bulk(&texts).await;
        for ((written, (id, text)), (_, rewrite)) in results.iter().zip(&texts).zip(docs) {
            assert_eq!(&written.id, id, "bulk results follow the request's order");
            self.remember(written, text.clone(), *rewrite, sent);
        }
    }

    /// Records a write answered `written`, of `text`, sent at `sent`.
    fn remember(
        &mut self,
        written: &crate::wire::Written,
        text: String,
        rewrite: bool,
        sent: Instant,
    ) {
        let id = &written.id;
        if let Some(before) = self.report.last.get(id) {
            assert!(
                written.version > before.version,
                "{id}: version {} after {}",
                written.version,
                before.version
            );
        }
        if !written.embedded_with.iter().any(|model| model == TARGET) {
            self.report.source_only += 1;
            self.report.last_source_only = Some(sent);
        } else if rewrite {
            self.report.dual_rewrites += 1;
        }
        let last = Written {
            replica: self.replica,
            version: written.version,
            text,
            rewrite,
        };
        self.report.last.insert(id.clone(), last);
    }
}
