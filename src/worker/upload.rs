//! Moves an attempt's files between it and the store: fetches its inputs before the command
//! starts, and uploads a succeeded attempt's files as its artifacts: asks the server for URLs
//! over the worker stream (through the worker loop, `Event::Ask`), PUTs the bytes straight to
//! the store (in parts above the server's threshold) and reports upload progress on the way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};

use super::command::Event;
use crate::artifacts;
use crate::proto::{self, connect_request::Msg as Out, connect_response::Msg as In};
use crate::scheduler::Progress;

/// Tries per URL request and per PUT; the stream may be reconnecting in between.
const TRIES: u32 = 5;
/// First wait between tries, doubling.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// One PUT (a whole small file or one part) may take this long.
const PUT_TIMEOUT: Duration = Duration::from_secs(600);

/// A file to upload and the artifact name it gets.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub path: PathBuf,
    pub name: String,
}

/// Why an upload did not happen. `Lost`: the lease is gone, nothing to retry.
#[derive(Debug)]
pub enum Failure {
    Lost(String),
    Failed(String),
}

/// The regular files under `dir`, named by their path relative to it (symlinks and the like
/// are skipped: only what the command wrote is uploaded).
pub fn collect(dir: &Path) -> std::io::Result<Vec<File>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                files.push(File { path, name });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Fetches each input into `dir`, under its name (the reference's part after the id).
pub async fn download_inputs(
    http: &reqwest::Client,
    inputs: &[proto::InputUrl],
    dir: &Path,
) -> Result<(), String> {
    for input in inputs {
        let name = artifacts::input_name(&input.input);
        artifacts::check_name(name).map_err(|e| e.to_string())?;
        let what = format!("input {name:?}");
        crate::client::fetch_to(http, &input.url, &dir.join(name), &what).await?;
    }
    Ok(())
}

/// Uploads files of one attempt.
pub struct Uploader {
    pub events: mpsc::Sender<Event>,
    pub job_id: String,
    pub token: u64,
    pub http: reqwest::Client,
    /// The attempt's last reported percent, which upload progress keeps.
    pub percent: f32,
}

impl Uploader {
    /// Uploads every file; returns their artifact names.
    pub async fn upload_all(&self, files: &[File]) -> Result<Vec<String>, Failure> {
        let mut names = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            artifacts::check_name(&file.name).map_err(|e| Failure::Failed(e.to_string()))?;
            let size = tokio::fs::metadata(&file.path)
                .await
                .map_err(|e| Failure::Failed(format!("{}: {e}", file.path.display())))?
                .len();
            self.progress(format!(
                "{} ({}/{}): 0/{}",
                file.name,
                i + 1,
                files.len(),
                mib(size)
            ))
            .await;
            self.upload(file, size, (i + 1, files.len())).await?;
            names.push(file.name.clone());
        }
        Ok(names)
    }

    async fn upload(&self, file: &File, size: u64, (n, of): (usize, usize)) -> Result<(), Failure> {
        let content_type = artifacts::content_type_of(&file.name);
        let ask = Out::Upload(proto::UploadRequest {
            job_id: self.job_id.clone(),
            token: self.token,
            name: file.name.clone(),
            size,
            content_type: content_type.to_string(),
        });
        let url = match self.ask(&file.name, ask).await? {
            In::UploadUrl(url) => url,
            In::UploadResult(r) => return Err(refusal(&file.name, r)),
            other => return Err(Failure::Failed(format!("unexpected answer {other:?}"))),
        };
        if url.part_urls.is_empty() {
            let body = read(&file.path, 0, size).await?;
            self.put(&url.url, content_type, body).await?;
            self.progress(format!("{} ({n}/{of}): {}", file.name, mib(size)))
                .await;
            return Ok(());
        }
        let mut etags = Vec::with_capacity(url.part_urls.len());
        for (i, part_url) in url.part_urls.iter().enumerate() {
            let start = i as u64 * url.part_size;
            let len = url.part_size.min(size.saturating_sub(start));
            let body = read(&file.path, start, len).await?;
            etags.push(self.put(part_url, "", body).await?);
            self.progress(format!(
                "{} ({n}/{of}): {}/{}",
                file.name,
                mib(start + len),
                mib(size)
            ))
            .await;
        }
        let done = Out::UploadDone(proto::UploadDone {
            job_id: self.job_id.clone(),
            token: self.token,
            name: file.name.clone(),
            upload_id: url.upload_id,
            part_etags: etags,
        });
        match self.ask(&file.name, done).await? {
            In::UploadResult(r) if r.code == 0 => Ok(()),
            In::UploadResult(r) => Err(refusal(&file.name, r)),
            other => Err(Failure::Failed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends `message` on the stream and waits for the server's answer about `name`; tried
    /// again while the stream is down or the server is briefly unavailable.
    async fn ask(&self, name: &str, message: Out) -> Result<In, Failure> {
        let mut wait = RETRY_AFTER;
        for _ in 0..TRIES {
            let (reply, answer) = oneshot::channel();
            let ask = Event::Ask {
                job_id: self.job_id.clone(),
                name: name.to_string(),
                message: message.clone(),
                reply,
            };
            if self.events.send(ask).await.is_err() {
                return Err(Failure::Failed("the worker is stopping".into()));
            }
            match answer.await {
                Ok(In::UploadResult(r)) if r.code == tonic::Code::Unavailable as i32 => {}
                Ok(answer) => return Ok(answer),
                // The stream ended before the answer came; ask again on the next one.
                Err(_) => {}
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Err(Failure::Failed(format!(
            "no upload URL for {name:?} after {TRIES} tries"
        )))
    }

    /// PUTs `body` to a presigned URL; returns the ETag the store answered.
    async fn put(&self, url: &str, content_type: &str, body: Vec<u8>) -> Result<String, Failure> {
        // Shared, not copied, by each try.
        let body = bytes::Bytes::from(body);
        let mut wait = RETRY_AFTER;
        let mut last = String::new();
        for _ in 0..TRIES {
            let mut request = self.http.put(url).timeout(PUT_TIMEOUT).body(body.clone());
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let etag = r.headers().get("etag").and_then(|v| v.to_str().ok());
                    return Ok(etag.unwrap_or_default().to_string());
                }
                // The store refused the signature or the request: trying again will not help.
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(Failure::Failed(format!(
                        "the store refused the upload ({status}): {}",
                        text.chars().take(300).collect::<String>()
                    )));
                }
                Ok(r) => last = format!("the store answered {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Err(Failure::Failed(format!("upload failed: {last}")))
    }

    async fn progress(&self, message: String) {
        let progress = Progress {
            percent: self.percent,
            stage: "upload".into(),
            message,
        };
        let _ = self
            .events
            .send(Event::Progress {
                job_id: self.job_id.clone(),
                token: self.token,
                progress,
            })
            .await;
    }
}

fn refusal(name: &str, r: proto::UploadResult) -> Failure {
    let text = format!("upload of {name:?} refused: {}", r.message);
    match r.code == tonic::Code::FailedPrecondition as i32 {
        true => Failure::Lost(text),
        false => Failure::Failed(text),
    }
}

/// `len` bytes of the file from `start` (a part, or the whole of a small file).
async fn read(path: &Path, start: u64, len: u64) -> Result<Vec<u8>, Failure> {
    let failed = |e: std::io::Error| Failure::Failed(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(failed)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(failed)?;
    let mut body = vec![0; len as usize];
    file.read_exact(&mut body).await.map_err(failed)?;
    Ok(body)
}

fn mib(bytes: u64) -> String {
    match bytes < 1 << 20 {
        true => format!("{bytes} B"),
        false => format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_regular_files_by_relative_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("frames")).unwrap();
        std::fs::write(dir.path().join("video.mp4"), b"v").unwrap();
        std::fs::write(dir.path().join("frames/0001.png"), b"f").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let names: Vec<_> = collect(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["frames/0001.png", "video.mp4"]);
        assert_eq!(artifacts::content_type_of("frames/0001.PNG"), "image/png");
        assert_eq!(artifacts::content_type_of("notes"), artifacts::DEFAULT_TYPE);
    }
}
