//! Each model's graph saved in the data directory, so that a restart does not rebuild it.
//!
//! Two files per model under `<data-dir>/indexes/`, named by the model id in hex: `.hnsw`,
//! the graph in usearch's format, and `.nodes`, which tags it: the model, dimensions and
//! settings it was built with, the graph file's length and CRC-32, and for every node the
//! document id and version whose vector it holds (or that it is stale, when the document
//! changed before the graph took the change), all under a CRC-32 of its own.
//!
//! Both are written to temporary files, flushed, and renamed into place, the graph first. A
//! crash between the renames leaves a node list that does not match the graph, which the
//! next start detects; so do a truncated or corrupt file and one made with other settings.
//! Any of these is logged and the graph is rebuilt from the rows in the background while
//! queries are answered exactly. Deleting the files is always safe: it only costs a rebuild.
//!
//! Restoring is in steps, so that start-up can load the graph while the rows stream (see
//! `start`): the node list is read first ([`read`]) and its documents claim the handles their
//! nodes have; the graph file is checked and loaded ([`Saved::load`]), which needs no rows;
//! then the graph is reconciled with the rows, which come from the database
//! ([`Loaded::reconcile`]): a node whose document no longer exists or has moved to another
//! version is removed, a node whose document is current keeps its place (renumbered only if
//! its document's handle differs), and every document the graph did not hold at the save
//! (written after it) stays unsynced for the feeding thread to add.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::HashMap;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::VectorIndex;
use super::graph::{Graph, GraphSettings, GraphWriter};
use super::handles::Handles;

/// Why a saved graph could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Graph(#[from] super::graph::GraphError),
    /// The files are truncated, corrupt, mismatched, or made for another model or settings.
    #[error("{0}")]
    Invalid(String),
}

/// The first bytes of a node list, with its format's version.
const MAGIC: &[u8; 8] = b"RMBDNOD1";

/// What a node list says about the graph beside it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Header {
    model: String,
    dims: usize,
    quantization: String,
    connectivity: usize,
    expansion_add: usize,
    graph_bytes: u64,
    graph_crc32: u32,
    nodes: u64,
}

impl Header {
    /// The tag of a graph of `model` with `dims` dimensions built with `settings`, before its
    /// file is measured.
    fn of(model: &str, dims: usize, settings: GraphSettings) -> Self {
        Self {
            model: model.to_owned(),
            dims,
            quantization: settings.quantization.name().to_owned(),
            connectivity: settings.connectivity,
            expansion_add: settings.expansion_add,
            graph_bytes: 0,
            graph_crc32: 0,
            nodes: 0,
        }
    }
}

/// One node of a saved graph: the document whose current vector it holds, or `None` when it
/// holds one the document has since replaced.
pub struct Node {
    handle: u32,
    document: Option<(String, u64)>,
}

/// Where one model's graph lives.
#[derive(Debug, Clone)]
pub struct Files {
    graph: PathBuf,
    nodes: PathBuf,
}

impl Files {
    /// The files of `model` under `dir`.
    pub fn new(dir: &Path, model: &str) -> Self {
        let stem: String = model.bytes().map(|b| format!("{b:02x}")).collect();
        Self {
            graph: dir.join(format!("{stem}.hnsw")),
            nodes: dir.join(format!("{stem}.nodes")),
        }
    }

    /// Removes both files, so that the next start rebuilds.
    pub fn discard(&self) {
        for path in [&self.graph, &self.nodes] {
            if let Err(error) = fs::remove_file(path)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove a saved index");
            }
        }
    }
}

/// What the nodes of `handles` in a graph hold, told by the model's `rows`; valid for as long
/// as the graph does not change (the caller is its only writer). The rows may change between
/// calls: a document that changed before its node is listed is listed as unknown, one that
/// changes after with the version its node holds, and either way the next start replaces the
/// node. So a caller may list a large graph in chunks, each under the rows' lock.
pub fn node_list(handles: impl Iterator<Item = u32>, rows: &VectorIndex) -> Vec<Node> {
    handles
        .map(|handle| Node {
            handle,
            document: rows
                .synced_entry(handle)
                .map(|(id, version)| (id.to_string(), version)),
        })
        .collect()
}

/// Saves `writer`'s graph of `model` (of `dims` dimensions, built with `settings`) with its
/// `nodes` (see [`node_list`]), every node of the graph.
pub fn save(
    files: &Files,
    model: &str,
    dims: usize,
    settings: GraphSettings,
    writer: &GraphWriter,
    nodes: &[Node],
) -> Result<(), PersistError> {
    let dir = files.graph.parent().expect("the files are in a directory");
    fs::create_dir_all(dir)?;
    let graph_tmp = files.graph.with_extension("hnsw.tmp");
    writer.save(&graph_tmp)?;
    let (graph_bytes, graph_crc32) = checksum(&graph_tmp)?;
    let header = Header {
        graph_bytes,
        graph_crc32,
        nodes: nodes.len() as u64,
        ..Header::of(model, dims, settings)
    };
    let nodes_tmp = files.nodes.with_extension("nodes.tmp");
    write_synced(&nodes_tmp, &encode(&header, nodes))?;
    File::open(&graph_tmp)?.sync_all()?;
    fs::rename(&graph_tmp, &files.graph)?;
    fs::rename(&nodes_tmp, &files.nodes)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// A saved graph's node list, checked against the model it is for, before the graph itself
/// is loaded.
pub struct Saved {
    header: Header,
    nodes: Vec<Node>,
}

/// The node list saved in `files` for `model`'s graph (of `dims` dimensions, built with
/// `settings`), or `None` when none was saved.
pub fn read(
    files: &Files,
    model: &str,
    dims: usize,
    settings: GraphSettings,
) -> Result<Option<Saved>, PersistError> {
    let bytes = match fs::read(&files.nodes) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let (header, nodes) = decode(&bytes)?;
    let expected = Header {
        graph_bytes: header.graph_bytes,
        graph_crc32: header.graph_crc32,
        nodes: header.nodes,
        ..Header::of(model, dims, settings)
    };
    if header != expected {
        return Err(PersistError::Invalid(format!(
            "saved for {header:?}, needed {expected:?}"
        )));
    }
    Ok(Some(Saved { header, nodes }))
}

impl Saved {
    /// Gives each current document of the list the handle its node has, where neither is
    /// taken (see [`Handles::claim`]), and adds it to `claimed`: a graph whose documents all
    /// keep their handles is restored without renumbering a node.
    pub fn claim_handles(&self, handles: &mut Handles, claimed: &mut RoaringBitmap) {
        for node in &self.nodes {
            if let Some((id, _)) = &node.document
                && handles.claim(id, node.handle)
            {
                claimed.insert(node.handle);
            }
        }
    }

    /// The graph the list describes, loaded from `files` once the file is checked against
    /// the list. It reads the whole file and needs no rows, so it can run while they load.
    pub fn load(self, files: &Files, settings: GraphSettings) -> Result<Loaded, PersistError> {
        let header = &self.header;
        if checksum(&files.graph)? != (header.graph_bytes, header.graph_crc32) {
            return Err(PersistError::Invalid(
                "the graph file does not match its node list".to_owned(),
            ));
        }
        let present: RoaringBitmap = self.nodes.iter().map(|node| node.handle).collect();
        if present.len() != self.nodes.len() as u64 {
            return Err(PersistError::Invalid("a node is listed twice".to_owned()));
        }
        let (graph, writer) = Graph::restore(header.dims, settings, &files.graph, present)?;
        Ok(Loaded {
            graph,
            writer,
            nodes: self.nodes,
        })
    }
}

/// A saved graph in memory, not yet reconciled with the rows.
pub struct Loaded {
    graph: Arc<Graph>,
    writer: GraphWriter,
    nodes: Vec<Node>,
}

impl Loaded {
    /// The graph with only the nodes that hold their document's current vector in `rows`
    /// (documents named by `handles`); the caller marks the other rows unsynced
    /// (`VectorIndex::sync_to`).
    pub fn reconcile(
        self,
        rows: &VectorIndex,
        handles: &Handles,
    ) -> Result<(Arc<Graph>, GraphWriter), PersistError> {
        let Loaded {
            graph,
            mut writer,
            nodes,
        } = self;
        let documents: HashMap<u32, &(String, u64)> = nodes
            .iter()
            .filter_map(|node| Some((node.handle, node.document.as_ref()?)))
            .collect();
        let mut kept = RoaringBitmap::new();
        writer.rekey(|old| {
            let (id, version) = documents.get(&old)?;
            // Most documents kept the handle they claimed: comparing ids is cheaper than a
            // lookup.
            let handle = match handles.id(old) {
                Some(held) if **held == **id => old,
                _ => handles.get(id)?,
            };
            (kept.insert(handle) && rows.version(handle) == Some(*version)).then_some(handle)
        })?;
        Ok((graph, writer))
    }
}

/// The node list's bytes: magic, header length and JSON, the nodes, and a CRC-32 of it all.
fn encode(header: &Header, nodes: &[Node]) -> Vec<u8> {
    let header = serde_json::to_vec(header).expect("a header serialises");
    let mut out = Vec::with_capacity(16 + header.len() + nodes.len() * 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for node in nodes {
        out.extend_from_slice(&node.handle.to_le_bytes());
        match &node.document {
            Some((id, version)) => {
                out.push(1);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(id.len() as u32).to_le_bytes());
                out.extend_from_slice(id.as_bytes());
            }
            None => out.push(0),
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<(Header, Vec<Node>), PersistError> {
    let invalid = |what: &str| PersistError::Invalid(format!("the node list is {what}"));
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or_else(|| invalid("truncated"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(invalid("corrupt or truncated"));
    }
    let mut reader = Reader(body);
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(invalid("of another format"));
    }
    let header_len = reader.u32()? as usize;
    let header: Header =
        serde_json::from_slice(reader.take(header_len)?).map_err(|_| invalid("unreadable"))?;
    let mut nodes = Vec::new();
    while !reader.0.is_empty() {
        let handle = reader.u32()?;
        let document = match reader.take(1)?[0] {
            0 => None,
            _ => {
                let version = u64::from_le_bytes(reader.array()?);
                let id_len = reader.u32()? as usize;
                let id =
                    std::str::from_utf8(reader.take(id_len)?).map_err(|_| invalid("unreadable"))?;
                Some((id.to_owned(), version))
            }
        };
        nodes.push(Node { handle, document });
    }
    if nodes.len() as u64 != header.nodes {
        return Err(invalid("short of nodes"));
    }
    Ok((header, nodes))
}

/// Reads a node list's fields in order.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        if self.0.len() < n {
            return Err(PersistError::Invalid(
                "the node list is truncated".to_owned(),
            ));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PersistError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, PersistError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
}

/// The length and CRC-32 of the file at `path`, read in pieces.
fn checksum(path: &Path) -> io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 1 << 20];
    let mut length = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((length, hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
        length += read as u64;
    }
}

/// Writes `bytes` to `path` and flushes them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
