//! Artifacts on S3 (or any S3-compatible store): where a job's files live, presigned URLs to
//! put and get them, and the rules for artifact names. Off without a bucket.
//!
//! An artifact of a job's attempt lives at `tenant/<tenant>/jobs/<job id>/attempt-<n>/<name>`,
//! so the object key alone says whose it is and which attempt wrote it (a zombie attempt's
//! upload lands beside the accepted one, never over it).

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::scheduler::Artifact;

/// Longest artifact name, in bytes.
pub const MAX_NAME: usize = 255;
/// Most artifacts one job may have.
pub const MAX_ARTIFACTS: usize = 256;
/// Most inputs one job may name.
pub const MAX_INPUTS: usize = 16;
/// Files larger than this are uploaded in parts.
pub const MULTIPART_ABOVE: u64 = 64 << 20;
/// The smallest part; S3 wants at least 5 MiB for every part but the last.
const MIN_PART: u64 = 16 << 20;
/// S3's limits: 10,000 parts of at most 5 GiB, so 5 TiB at most.
const MAX_PARTS: u64 = 10_000;
pub const MAX_SIZE: u64 = 5 << 40;
/// What an object is stored as when its uploader does not say.
pub const DEFAULT_TYPE: &str = "application/octet-stream";
/// SigV4 presigned URLs last at most a week.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("artifacts are off on this server (CONVEYOR_S3_BUCKET is not set)")]
    Off,
    #[error("artifact storage: {0}")]
    Config(String),
    #[error("artifact name: {0}")]
    Name(String),
    #[error("artifact storage: {0}")]
    Store(String),
    /// The store answered, and said no (a bad part list, an unknown upload id).
    #[error("the artifact store refused: {0}")]
    Rejected(String),
}

/// Where artifacts go and how clients reach them.
#[derive(Clone, Debug)]
pub struct Options {
    pub bucket: String,
    pub region: String,
    /// An S3-compatible endpoint (MinIO, R2, Ceph); AWS's own when `None`.
    pub endpoint: Option<String>,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key`, as most S3-compatible stores want.
    pub path_style: bool,
    /// Keys from the configuration; else the standard AWS chain (`AWS_ACCESS_KEY_ID` and
    /// friends, profile files, web identity, ECS and EC2 instance roles).
    pub access_key: Option<(String, String)>,
    /// How long a presigned upload URL lasts.
    pub upload_expiry: Duration,
    /// How long a presigned download URL lasts unless the caller asks for less.
    pub download_expiry: Duration,
}

/// The store: one S3 client and its bucket.
#[derive(Clone)]
pub struct Storage {
    client: aws_sdk_s3::Client,
    options: Options,
}

impl Storage {
    pub async fn new(options: Options) -> Result<Storage, Error> {
        if options.bucket.is_empty() {
            return Err(Error::Config("no bucket".into()));
        }
        for expiry in [options.upload_expiry, options.download_expiry] {
            if expiry.is_zero() || expiry > MAX_EXPIRY {
                return Err(Error::Config(format!(
                    "URL expiry {expiry:?} is outside 1s..=7d"
                )));
            }
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region = Region::new(options.region.clone());
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .force_path_style(options.path_style)
            .http_client(http.clone());
        config = match &options.access_key {
            Some((key, secret)) => {
                config.credentials_provider(Credentials::new(key, secret, None, None, "conveyor"))
            }
            None => config.credentials_provider(chain(http, region).await),
        };
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Storage {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            options,
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// A URL that PUTs the object `key` until it expires. With a `content_type` the PUT must
    /// send that Content-Type (it is signed); without, the PUT's own is stored.
    pub async fn upload_url(&self, key: &str, content_type: Option<&str>) -> Result<String, Error> {
        let presigned = self
            .client
            .put_object()
            .bucket(&self.options.bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_string))
            .presigned(presigning(self.options.upload_expiry)?)
            .await
            .map_err(store)?;
        Ok(presigned.uri().to_string())
    }

    /// Starts a multipart upload of `size` bytes to `key`: its upload id, part size and one PUT
    /// URL per part.
    pub async fn multipart(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
    ) -> Result<Multipart, Error> {
        let part_size = part_size(size);
        let parts = size.div_ceil(part_size).max(1);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.options.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(store)?;
        let upload_id = created
            .upload_id
            .ok_or_else(|| Error::Store("the store gave no upload id".into()))?;
        let mut part_urls = Vec::with_capacity(parts as usize);
        for number in 1..=parts {
            let presigned = self
                .client
                .upload_part()
                .bucket(&self.options.bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number as i32)
                .presigned(presigning(self.options.upload_expiry)?)
                .await
                .map_err(store)?;
            part_urls.push(presigned.uri().to_string());
        }
        Ok(Multipart {
            upload_id,
            part_size,
            part_urls,
        })
    }

    /// Assembles a multipart upload from its parts' ETags, in part order.
    pub async fn finish_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), Error> {
        let parts = etags
            .iter()
            .enumerate()
            .map(|(i, etag)| {
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.options.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(refusal) => Error::Rejected(refusal.to_string()),
                None => store(e),
            })?;
        Ok(())
    }

    /// What the store has at `key` (as artifact `name`), or `None` when it has nothing there.
    pub async fn head(&self, key: &str, name: &str) -> Result<Option<Artifact>, Error> {
        let head = self
            .client
            .head_object()
            .bucket(&self.options.bucket)
            .key(key)
            .send()
            .await;
        match head {
            Ok(h) => Ok(Some(Artifact {
                name: name.to_string(),
                size: h.content_length.unwrap_or(0).max(0) as u64,
                content_type: h.content_type.unwrap_or_else(|| DEFAULT_TYPE.into()),
                checksum: h.e_tag.unwrap_or_default().trim_matches('"').to_string(),
            })),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(store(e)),
        }
    }

    /// A URL that GETs the object `key` for `expiry` (the configured default when `None`).
    pub async fn download_url(&self, key: &str, expiry: Option<Duration>) -> Result<String, Error> {
        let expiry = expiry.unwrap_or(self.options.download_expiry);
        let presigned = self
            .client
            .get_object()
            .bucket(&self.options.bucket)
            .key(key)
            .presigned(presigning(expiry)?)
            .await
            .map_err(store)?;
        Ok(presigned.uri().to_string())
    }
}

impl Storage {
    /// Up to `max` object keys under `prefix` after `start_after`, in key order, with when each
    /// was last written (unix ms); the flag says whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: i32,
    ) -> Result<(Vec<(String, i64)>, bool), Error> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.options.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_string))
            .max_keys(max)
            .send()
            .await
            .map_err(store)?;
        let objects = page
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                let modified = o.last_modified.and_then(|t| t.to_millis().ok())?;
                Some((o.key?, modified))
            })
            .collect();
        Ok((objects, page.is_truncated.unwrap_or(false)))
    }

    /// Deletes objects, 1,000 per request (S3's most).
    pub async fn delete(&self, keys: &[String]) -> Result<(), Error> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Store(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::Store(e.to_string()))?;
            let answer = self
                .client
                .delete_objects()
                .bucket(&self.options.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(store)?;
            if let Some(e) = answer.errors.unwrap_or_default().first() {
                return Err(Error::Store(format!(
                    "deleting {}: {}",
                    e.key.as_deref().unwrap_or_default(),
                    e.message.as_deref().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

/// Where every object Conveyor writes lives.
pub const ROOT: &str = "tenant/";

/// What an object key says about its object (`object_key`, `input_key`).
#[derive(Clone, Debug, PartialEq)]
pub enum Located<'a> {
    Artifact {
        job_id: &'a str,
        attempt: u32,
        name: &'a str,
    },
    Input,
}

/// Reads an object key Conveyor wrote; `None` for anything else in the bucket.
pub fn locate(key: &str) -> Option<Located<'_>> {
    let rest = key.strip_prefix(ROOT)?;
    let (_tenant, rest) = rest.split_once('/')?;
    if rest.starts_with("inputs/") {
        return Some(Located::Input);
    }
    let rest = rest.strip_prefix("jobs/")?;
    let (job_id, rest) = rest.split_once('/')?;
    let (attempt, name) = rest.split_once('/')?;
    let attempt = attempt.strip_prefix("attempt-")?.parse().ok()?;
    Some(Located::Artifact {
        job_id,
        attempt,
        name,
    })
}

/// The standard AWS credential chain, its own requests on `http`. Looked at once here so a
/// server without credentials says so at start; it keeps trying later (an instance role may
/// come up after the server).
async fn chain(
    http: aws_sdk_s3::config::SharedHttpClient,
    region: Region,
) -> aws_config::default_provider::credentials::DefaultCredentialsChain {
    use aws_sdk_s3::config::ProvideCredentials;
    let conf = aws_config::provider_config::ProviderConfig::without_region()
        .with_http_client(http)
        .with_region(Some(region.clone()));
    let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(region)
        .configure(conf)
        .build()
        .await;
    let first = tokio::time::timeout(Duration::from_secs(10), chain.provide_credentials()).await;
    match first {
        Ok(Ok(_)) => tracing::info!("artifact store credentials from the AWS chain"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no artifact store credentials yet: uploads fail until the AWS chain finds some (or set CONVEYOR_S3_ACCESS_KEY/SECRET_KEY)")
        }
        Err(_) => tracing::warn!(
            "the AWS credential chain did not answer in 10 s; uploads fail until it does"
        ),
    }
    chain
}

/// A multipart upload the worker fills part by part.
#[derive(Clone, Debug)]
pub struct Multipart {
    pub upload_id: String,
    pub part_size: u64,
    pub part_urls: Vec<String>,
}

/// Parts of at least `MIN_PART`, few enough to stay within `MAX_PARTS`, whole MiBs.
fn part_size(size: u64) -> u64 {
    let mib = 1 << 20;
    (size.div_ceil(MAX_PARTS).div_ceil(mib) * mib).max(MIN_PART)
}

/// The whole error chain: the SDK's own Display says only "service error".
fn store(e: impl std::error::Error) -> Error {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    Error::Store(text)
}

fn presigning(expiry: Duration) -> Result<PresigningConfig, Error> {
    PresigningConfig::expires_in(expiry).map_err(|e| Error::Config(e.to_string()))
}

/// The object key of artifact `name` of a job's attempt; `name` must pass `check_name`.
pub fn object_key(tenant: &str, job_id: &str, attempt: u32, name: &str) -> String {
    format!(
        "{ROOT}{}/jobs/{job_id}/attempt-{attempt}/{name}",
        segment(tenant)
    )
}

/// The Content-Type of a file, by its extension; the store's default otherwise.
pub fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mov") => "video/quicktime",
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/wav",
        Some("ogg") => "audio/ogg",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("json") => "application/json",
        Some("txt" | "log") => "text/plain",
        Some("html") => "text/html",
        Some("csv") => "text/csv",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        _ => DEFAULT_TYPE,
    }
}

/// A new input's reference: `<uuid v7>/<name>`; `name` must pass `check_name`.
pub fn new_input(name: &str) -> String {
    format!("{}/{name}", uuid::Uuid::now_v7())
}

/// The object key of one of a tenant's inputs: a reference resolves only under its own
/// tenant, so naming another tenant's input finds nothing.
pub fn input_key(tenant: &str, input: &str) -> String {
    format!("{ROOT}{}/inputs/{input}", segment(tenant))
}

/// The file name of an input reference (what follows its id): a worker finds the input under
/// it, so a job's inputs have different ones.
pub fn input_name(input: &str) -> &str {
    input
        .split_once('/')
        .map(|(_, name)| name)
        .unwrap_or_default()
}

/// An input reference is `<uuid>/<name>` with a valid name.
pub fn check_input(input: &str) -> Result<(), Error> {
    let bad = || {
        Error::Name(format!(
            "input {:?} is not a CreateInputUpload reference",
            truncate(input)
        ))
    };
    let (id, name) = input.split_once('/').ok_or_else(bad)?;
    uuid::Uuid::parse_str(id).map_err(|_| bad())?;
    check_name(name)
}

/// A tenant as one key segment: a tenant name may hold `/` (a JWT claim says what it is), so
/// `/` and `%` are percent-encoded and no tenant's folder reaches into another's.
fn segment(tenant: &str) -> String {
    tenant.replace('%', "%25").replace('/', "%2F")
}

/// An artifact name is a relative path of plain segments: no `..` or `.` segment, no leading
/// or doubled `/`, no backslash or control character, not an object key, at most `MAX_NAME`
/// bytes (bad input row 29: it can never reach outside its attempt's folder).
pub fn check_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Name(format!("{why}: {:?}", truncate(name))));
    if name.is_empty() || name.len() > MAX_NAME {
        return bad(&format!("must be 1..={MAX_NAME} bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return bad("no control characters or backslashes");
    }
    // A whole object key (someone else's, even) is not a name within a job.
    if name.starts_with(ROOT) {
        return bad("a name within the job (like video.mp4), not an object key");
    }
    if name
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return bad(
            "a relative path of plain names (no leading, trailing or doubled /, no . or ..)",
        );
    }
    Ok(())
}

/// What a worker may say an upload is: `MAX_SIZE` bytes at most, a content type of printable
/// ASCII (it becomes a header).
pub fn check_upload(size: u64, content_type: &str) -> Result<(), Error> {
    if size > MAX_SIZE {
        return Err(Error::Name(format!(
            "size {size} is above {MAX_SIZE} bytes"
        )));
    }
    if content_type.len() > 255 || !content_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::Name(format!(
            "content type {:?} is not a header value (printable ASCII, at most 255 bytes)",
            truncate(content_type)
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_folder() {
        for good in ["video.mp4", "frames/0001.png", "a b.txt", "ü.bin"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "",
            "../secret",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\nb",
            &long,
            "tenant/other/..",
            "tenant/globex/jobs/render:0190/attempt-1/video.mp4",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(part_size(200 << 20), MIN_PART);
        assert_eq!(
            part_size(MAX_SIZE).div_ceil(1 << 20) * (1 << 20),
            part_size(MAX_SIZE)
        );
        assert!(MAX_SIZE.div_ceil(part_size(MAX_SIZE)) <= MAX_PARTS);
        let key = object_key("acme", "render:0190", 2, "out/video.mp4");
        assert_eq!(key, "tenant/acme/jobs/render:0190/attempt-2/out/video.mp4");
        assert_eq!(
            locate(&key),
            Some(Located::Artifact {
                job_id: "render:0190",
                attempt: 2,
                name: "out/video.mp4"
            })
        );
        assert_eq!(
            locate("tenant/acme/inputs/0190/in.mp4"),
            Some(Located::Input)
        );
        let sneaky = object_key("acme/jobs/x", "render:0190", 1, "a");
        assert_eq!(
            sneaky,
            "tenant/acme%2Fjobs%2Fx/jobs/render:0190/attempt-1/a"
        );
        assert!(matches!(
            locate(&sneaky),
            Some(Located::Artifact {
                job_id: "render:0190",
                ..
            })
        ));
        for other in [
            "other/x",
            "tenant/acme/jobs/j/attempt-x/a",
            "tenant/acme/jobs/j",
        ] {
            assert_eq!(locate(other), None, "{other}");
        }
    }
}
