//! What each RPC needs: a client scope, the worker role, or nothing (health, reflection). A
//! path not listed is one no service has: any authenticated caller then gets UNIMPLEMENTED. A
//! test fails for an RPC of the proto that is not listed, so none is ever left open by accident.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Submit,
    Read,
    Watch,
    Cancel,
    /// Everything a client may do, and operations on queues and keys.
    Admin,
}

const ALL: [Scope; 5] = [
    Scope::Submit,
    Scope::Read,
    Scope::Watch,
    Scope::Cancel,
    Scope::Admin,
];

impl Scope {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Watch => "watch",
            Scope::Cancel => "cancel",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    /// A comma- or space-separated list, e.g. `submit,read,watch`; unknown names are an error.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for name in text.split([',', ' ']).filter(|s| !s.is_empty()) {
            let scope = Scope::parse(name).ok_or_else(|| {
                format!("{name:?} is not a scope; use submit, read, watch, cancel or admin")
            })?;
            scopes = scopes.with(scope);
        }
        if scopes == Scopes::default() {
            return Err("name at least one scope: submit, read, watch, cancel or admin".into());
        }
        Ok(scopes)
    }

    /// Like `parse`, but names it does not know are skipped (a JWT's `scope` claim carries other
    /// services' scopes too).
    pub fn parse_known(text: &str) -> Scopes {
        text.split([',', ' '])
            .filter_map(Scope::parse)
            .fold(Scopes::default(), Scopes::with)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = ALL
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(Scope::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// No such method: any credential, to learn that.
    Known,
    Client(Scope),
    Worker,
}

/// What calling `path` (`/package.Service/Method`) needs.
pub fn need(path: &str) -> Need {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Need::Nothing,
        (s, _) if s.starts_with("grpc.reflection.") => Need::Nothing,
        ("conveyor.v1.WorkerService", "Connect") => Need::Worker,
        (
            "conveyor.v1.JobService",
            "SubmitJob" | "SubmitJobs" | "RetryJob" | "CreateInputUpload",
        ) => Need::Client(Scope::Submit),
        (
            "conveyor.v1.JobService",
            "GetJob" | "ListJobs" | "GetQueueStats" | "ListQueues" | "GetArtifactUrl",
        ) => Need::Client(Scope::Read),
        ("conveyor.v1.JobService", "WatchJob" | "WatchJobs") => Need::Client(Scope::Watch),
        ("conveyor.v1.JobService", "CancelJob") => Need::Client(Scope::Cancel),
        ("conveyor.v1.JobService", "PauseQueue" | "ResumeQueue") => Need::Client(Scope::Admin),
        _ => Need::Known,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn scopes_parse_and_admin_implies_all() {
        let s = Scopes::parse("submit,read").unwrap();
        assert!(s.allows(Scope::Submit) && s.allows(Scope::Read) && !s.allows(Scope::Cancel));
        assert_eq!(s.to_string(), "submit,read");
        assert!(Scopes::parse("admin").unwrap().allows(Scope::Cancel));
        assert!(Scopes::parse("submit,root").is_err() && Scopes::parse("").is_err());
        assert_eq!(
            Scopes::parse_known("openid conveyor submit"),
            Scopes::parse("submit").unwrap()
        );
    }

    /// Every RPC of the proto has a deliberate entry: a new one fails here until it is given
    /// its scope (it would otherwise need `admin`).
    #[test]
    fn every_rpc_is_mapped() {
        let set =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert_ne!(need(&path), Need::Known, "{path} has no scope");
                    seen += 1;
                }
            }
        }
        assert!(seen >= 7);
        assert_eq!(need("/conveyor.v1.JobService/DropAll"), Need::Known);
        assert_eq!(need("/grpc.health.v1.Health/Check"), Need::Nothing);
    }
}
