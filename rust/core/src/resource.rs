//! Resource: who wrote a file, from its path, as OTLP resource attributes. Every request holds
//! one `ResourceLogs` per resource (the batcher groups records by it), encoded once.
//!
//! - `…/<namespace>_<pod>_<uid>/<container>/<restart>.log` (the kubelet's layout under
//!   `/var/log/pods`, matched by shape, as the OpenTelemetry `container` parser does, so a tree
//!   under any root works; a rotated `<restart>.log.<YYYYmmdd-HHMMSS>` is the same container):
//!   `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`, `k8s.container.name`,
//!   `k8s.container.restart_count`;
//! - `…/containers/<id>/<id>-json.log` (docker's json-file, rotated `.1`, `.2`, …):
//!   `container.id`;
//! - always `host.name`, and `k8s.node.name` when the owner knows it (the downward API's
//!   `K8S_NODE_NAME`).

use crate::otlp;

/// A resource's attributes, encoded once in each wire form.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// `Resource.attributes` fields (protobuf).
    pub proto: Vec<u8>,
    /// The `attributes` array's members (OTLP/JSON), comma-separated.
    pub json: Vec<u8>,
}

impl Resource {
    pub fn new(attrs: &[(&str, &str)]) -> Self {
        let mut proto = Vec::new();
        let mut json = Vec::new();
        for (i, (k, v)) in attrs.iter().enumerate() {
            otlp::proto_string_attr(&mut proto, 1, k, v);
            if i > 0 {
                json.push(b',');
            }
            otlp::json_string_attr(&mut json, k, v.as_bytes());
        }
        Resource { proto, json }
    }
}

/// The attributes a path gives (besides `host.name` and `k8s.node.name`).
pub fn path_attrs(path: &str) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = path.rsplit('/').take(3).collect();
    if let [file, container, pod_dir] = parts[..] {
        if let Some(pod) = pod_dir_attrs(pod_dir) {
            if let Some(restart) = restart_count(file) {
                if !container.is_empty() && !container.contains(['.', '_']) {
                    let mut a = pod;
                    a.push(("k8s.container.name", container.to_string()));
                    a.push(("k8s.container.restart_count", restart.to_string()));
                    return a;
                }
            }
        }
        if let Some(id) = docker_id(file, container) {
            return vec![("container.id", id.to_string())];
        }
    }
    Vec::new()
}

/// `<namespace>_<pod>_<uid>`: namespaces and pod names hold no `_` (DNS labels and
/// subdomains), so the first and last `_` split it.
fn pod_dir_attrs(dir: &str) -> Option<Vec<(&'static str, String)>> {
    let (ns, rest) = dir.split_once('_')?;
    let (pod, uid) = rest.rsplit_once('_')?;
    let dns = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let uid_ok = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (dns(ns) && dns(pod) && uid_ok).then(|| vec![("k8s.namespace.name", ns.to_string()), ("k8s.pod.name", pod.to_string()), ("k8s.pod.uid", uid.to_string())])
}

/// `<n>.log`, or the kubelet's rotated `<n>.log.<YYYYmmdd-HHMMSS>`.
fn restart_count(file: &str) -> Option<u64> {
    let (n, rest) = file.split_once(".log")?;
    let rotated = rest.strip_prefix('.').is_some_and(|ts| ts.len() == 15 && ts.as_bytes()[8] == b'-' && ts.bytes().enumerate().all(|(i, b)| i == 8 || b.is_ascii_digit()));
    if !(rest.is_empty() || rotated) || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `<id>-json.log` (or `.1`, `.2`, … after rotation) in a directory named `<id>`.
fn docker_id<'a>(file: &str, dir: &'a str) -> Option<&'a str> {
    let rest = file.strip_prefix(dir)?.strip_prefix("-json.log")?;
    let rotated = rest.strip_prefix('.').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let hex = dir.len() >= 12 && dir.bytes().all(|b| b.is_ascii_hexdigit());
    ((rest.is_empty() || rotated) && hex).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(path: &str) -> Vec<(&'static str, String)> {
        path_attrs(path)
    }

    #[test]
    fn kubelet_paths_give_the_pod_and_container() {
        let want = |ns: &str, pod: &str, uid: &str, c: &str, n: &str| {
            vec![
                ("k8s.namespace.name", ns.to_string()),
                ("k8s.pod.name", pod.to_string()),
                ("k8s.pod.uid", uid.to_string()),
                ("k8s.container.name", c.to_string()),
                ("k8s.container.restart_count", n.to_string()),
            ]
        };
        let uid = "0b7e2c1a-3f4d-4e5f-9a8b-1c2d3e4f5a6b";
        assert_eq!(attrs(&format!("/var/log/pods/shop_cart-7d9f_{uid}/app/0.log")), want("shop", "cart-7d9f", uid, "app", "0"));
        // Any root (a test tree), a rotated name, a dotted pod name, a restart count over 9.
        assert_eq!(attrs(&format!("/tmp/x/kube-system_etcd.node-1_{uid}/etcd/12.log.20261201-101500")), want("kube-system", "etcd.node-1", uid, "etcd", "12"));
        assert_eq!(attrs("/var/log/pods/default_web_49cc7c1fd3702c40b2686ea7486091d3/nginx/3.log"), want("default", "web", "49cc7c1fd3702c40b2686ea7486091d3", "nginx", "3"));
        // Not the layout: compressed or temporary rotations, other names, a malformed directory.
        for p in [
            format!("/var/log/pods/shop_cart_{uid}/app/0.log.20261201-101500.gz"),
            format!("/var/log/pods/shop_cart_{uid}/app/0.log.20261201-101500.gz.tmp"),
            format!("/var/log/pods/shop_cart_{uid}/app/x.log"),
            format!("/var/log/pods/shop_cart_{uid}/app_1/0.log"),
            "/var/log/pods/shopcart/app/0.log".to_string(),
            "/var/log/app.log".to_string(),
        ] {
            assert_eq!(attrs(&p), vec![], "{p}");
        }
    }

    #[test]
    fn docker_json_file_paths_give_the_container_id() {
        let id = "3f4e8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f";
        for f in ["-json.log", "-json.log.1", "-json.log.12"] {
            assert_eq!(attrs(&format!("/var/lib/docker/containers/{id}/{id}{f}")), vec![("container.id", id.to_string())]);
        }
        assert_eq!(attrs(&format!("/var/lib/docker/containers/{id}/{id}-json.log.gz")), vec![]);
        assert_eq!(attrs(&format!("/var/lib/docker/containers/{id}/other-json.log")), vec![]);
    }

    #[test]
    fn resources_encode_once_in_both_forms() {
        let r = Resource::new(&[("host.name", "n1"), ("k8s.pod.name", "p\"q")]);
        assert_eq!(
            String::from_utf8(r.json).unwrap(),
            r#"{"key":"host.name","value":{"stringValue":"n1"}},{"key":"k8s.pod.name","value":{"stringValue":"p\"q"}}"#
        );
        let mut want = Vec::new();
        otlp::proto_string_attr(&mut want, 1, "host.name", "n1");
        otlp::proto_string_attr(&mut want, 1, "k8s.pod.name", "p\"q");
        assert_eq!(r.proto, want);
    }
}
