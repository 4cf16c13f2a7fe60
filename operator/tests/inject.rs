//! Table tests for sidecar injection: pod in, JSON patch out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use serde_json::{Value, json};
use tollgate_api::contract::{AppProbe, AppProbes};
use tollgate_operator::inject::{
    Boundary, InjectConfig, Injection, Refused, SharedCounters, inject_sidecar,
};

fn config() -> InjectConfig {
    InjectConfig {
        approval_url: None,
        tracing: None,
        image: "ghcr.io/tollgate-dev/tollgate:test".into(),
        resources: Default::default(),
        log_level: "info".into(),
        hyper_http1: false,
        control_plane_url: "https://tollgate-operator.tollgate-system.svc:8443".into(),
        control_plane_ca: "-----BEGIN CERTIFICATE-----\n...".into(),
        proxy_port: 15480,
        admin_port: 15481,
        proxy_uid: 2417,
        proxy_gid: 2417,
        boundary: Boundary::Redirect,
        counters: None,
    }
}

/// An MCP server pod: one container `server` with port 8000 named `mcp` and probes on it.
fn mk_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "github-mcp", "namespace": "agents", "labels": { "app": "github" } },
        "spec": { "containers": [{
            "name": "server", "image": "github-mcp:1",
            "ports": [{ "name": "mcp", "containerPort": 8000 }, { "name": "metrics", "containerPort": 9000 }],
            "readinessProbe": { "httpGet": { "path": "/health", "port": "mcp" } },
            "livenessProbe": { "tcpSocket": { "port": 8000 } },
        }]},
    })
}

fn with(mut pod: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = pod.pointer_mut(parent).unwrap();
    match target {
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => target[key] = value,
    }
    pod
}

fn annotated(pod: Value, annotations: Value) -> Value {
    with(pod, "/metadata/annotations", annotations)
}

fn opted_in() -> Value {
    annotated(mk_pod(), json!({ "tollgate.dev/inject": "true" }))
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn enabled_namespace() -> BTreeMap<String, String> {
    BTreeMap::from([("tollgate.dev/injection".into(), "enabled".into())])
}

fn run(pod: &Value, ns: &BTreeMap<String, String>) -> Injection {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    inject_sidecar(&pod, ns, &config()).expect("no bad annotation")
}

/// The refusal of `pod` in a namespace with `ns`'s labels (`what` says which case failed).
fn refused(pod: &Value, ns: &BTreeMap<String, String>, what: &str) -> Refused {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    inject_sidecar(&pod, ns, &config()).expect_err(what)
}

/// Injects and returns the patched pod.
fn injected(pod: &Value, ns: &BTreeMap<String, String>) -> Pod {
    injected_with(pod, ns, &config())
}

/// `pod` as injected by an operator configured with `config`.
fn injected_with(pod: &Value, ns: &BTreeMap<String, String>, config: &InjectConfig) -> Pod {
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let injection = inject_sidecar(&typed, ns, config).expect("no bad annotation");
    let Injection::Patch { patch, .. } = injection else {
        panic!("expected a patch, got {injection:?}")
    };
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).expect("the patch applies to the pod it was made for");
    serde_json::from_value(doc).unwrap()
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_deref()
        .unwrap()
}

fn sidecar(pod: &Pod) -> &Container {
    let init = init_containers(pod);
    let at = init
        .iter()
        .position(|c| c.name == "tollgate-proxy")
        .expect("the sidecar");
    assert!(
        init[..at].iter().all(|c| c.name == "tollgate-init"),
        "the sidecar starts before every init container of the app"
    );
    &init[at]
}

fn network_policy_boundary(pod: Value) -> Value {
    let mut annotations = pod["metadata"]["annotations"].clone();
    annotations["tollgate.dev/boundary"] = json!("network-policy");
    annotated(pod, annotations)
}

fn http_get(probe: &Option<Probe>) -> Value {
    serde_json::to_value(probe.as_ref().unwrap().http_get.as_ref().unwrap()).unwrap()
}

/// A container's ports as (name, number).
fn ports(c: &Container) -> Vec<(String, i32)> {
    let ports = c.ports.iter().flatten();
    ports
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

#[test]
fn opt_in_and_opt_out_follow_the_pod_annotation_then_the_namespace_label() {
    let cases = [
        ("annotated true", opted_in(), no_labels(), true),
        ("namespace enabled", mk_pod(), enabled_namespace(), true),
        (
            "annotated false in an enabled namespace",
            annotated(mk_pod(), json!({"tollgate.dev/inject": "false"})),
            enabled_namespace(),
            false,
        ),
        ("neither", mk_pod(), no_labels(), false),
        (
            "namespace label other than enabled",
            mk_pod(),
            BTreeMap::from([("tollgate.dev/injection".into(), "disabled".into())]),
            false,
        ),
    ];
    for (what, pod, ns, inject) in cases {
        match run(&pod, &ns) {
            Injection::Patch { .. } => assert!(inject, "{what}: injected but should not be"),
            Injection::Skip { warn, reason } => {
                assert!(!inject, "{what}: skipped ({reason}) but should be injected");
                assert!(!warn, "{what}: a pod that did not ask gets no warning");
            }
            Injection::Unchanged => panic!("{what}: unexpected Unchanged"),
        }
    }
}

#[test]
fn the_sidecar_is_a_native_sidecar_that_gates_the_app_on_its_readiness() {
    let pod = injected(&opted_in(), &no_labels());
    let c = sidecar(&pod);
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/tollgate-dev/tollgate:test")
    );
    let startup = c.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(startup.path.as_deref(), Some("/readyz"));
    assert_eq!(env(c, "TOLLGATE_UPSTREAM"), Some("http://localhost:8000"));
    assert_eq!(
        env(c, "TOLLGATE_CONTROL_PLANE"),
        Some("https://tollgate-operator.tollgate-system.svc:8443")
    );
    assert!(
        env(c, "TOLLGATE_CONTROL_PLANE_CA")
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}

#[test]
fn with_the_port_handoff_the_mcp_port_name_moves_to_the_sidecar_and_the_apps_probes_follow_it() {
    let pod = injected(&network_policy_boundary(opted_in()), &no_labels());
    assert_eq!(
        init_containers(&pod).len(),
        1,
        "no init container: no privilege"
    );
    let app = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        ports(app),
        [
            ("tollgate-app".to_string(), 8000),
            ("metrics".to_string(), 9000)
        ]
    );
    assert_eq!(
        ports(sidecar(&pod))[0],
        ("mcp".to_string(), 15480),
        "a Service targeting port name mcp now reaches the sidecar"
    );
    let readiness = app
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&readiness.port).unwrap(),
        json!("tollgate-app"),
        "the named probe follows the renamed port"
    );
    let liveness = app
        .liveness_probe
        .as_ref()
        .unwrap()
        .tcp_socket
        .as_ref()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&liveness.port).unwrap(),
        json!(8000),
        "numbered probes still reach the app directly"
    );
}

#[test]
fn the_projected_token_reaches_the_sidecar_only() {
    let pod = injected(&opted_in(), &no_labels());
    let spec = pod.spec.as_ref().unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tollgate-token")
        .expect("token volume");
    let token = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("tollgate"));
    let mounts = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "tollgate-token")
    };
    assert!(mounts(sidecar(&pod)));
    assert!(
        !spec.containers.iter().any(mounts),
        "app containers must not get the sidecar's token"
    );
}

#[test]
fn no_tollgate_container_can_be_given_the_apps_api_token() {
    // The API server's ServiceAccount admission runs again after the webhook and mounts the
    // app's token into every container that has nothing at its path: both of ours do.
    let pod = injected(&opted_in(), &no_labels());
    let spec = pod.spec.as_ref().unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tollgate-no-api-token")
        .expect("the empty volume");
    assert_eq!(
        volume.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    for c in init_containers(&pod) {
        let at = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
            .unwrap_or_else(|| panic!("{} leaves the token path open", c.name));
        assert_eq!(at.name, "tollgate-no-api-token");
        assert_eq!(at.read_only, Some(true));
    }
    assert!(
        spec.containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .all(|m| m.name != "tollgate-no-api-token"),
        "the app keeps its own token"
    );
}

#[test]
fn the_sidecar_listens_on_both_families() {
    let pod = injected(&opted_in(), &no_labels());
    let c = sidecar(&pod);
    assert!(env(c, "TOLLGATE_LISTEN").unwrap().starts_with("[::]:"));
    assert!(
        env(c, "TOLLGATE_METRICS_LISTEN")
            .unwrap()
            .starts_with("[::]:")
    );
}

#[test]
fn injection_is_recorded_and_a_reinvoked_webhook_changes_nothing() {
    let pod = injected(&opted_in(), &no_labels());
    let meta = &pod.metadata;
    assert_eq!(
        meta.labels.as_ref().unwrap()["tollgate.dev/injected"],
        "true"
    );
    let status: Value =
        serde_json::from_str(&meta.annotations.as_ref().unwrap()["tollgate.dev/status"]).unwrap();
    assert_eq!(status["upstreamPort"], 8000);
    assert_eq!(status["proxyPort"], 15480);
    let again = run(&serde_json::to_value(&pod).unwrap(), &no_labels());
    assert_eq!(again, Injection::Unchanged);
}

#[test]
fn pods_that_asked_and_cannot_be_protected_are_refused_naming_the_way_out() {
    let way_out = "tollgate.dev/inject: \"false\"";
    let host = with(opted_in(), "/spec/hostNetwork", json!(true));
    let err = refused(&host, &no_labels(), "hostNetwork");
    assert_eq!(err.at, "spec.hostNetwork");
    assert!(err.message.contains(way_out), "{}", err.message);
    // In an injection namespace too: a ReplicaSet's pod gets no warning anyone reads.
    let host = with(mk_pod(), "/spec/hostNetwork", json!(true));
    assert_eq!(
        refused(&host, &enabled_namespace(), "hostNetwork").at,
        "spec.hostNetwork"
    );
    // A port annotation that names no port (here, not even a number) protects nothing.
    for value in ["8080/TCP", "http", "mcp-port"] {
        let pod = annotated(
            mk_pod(),
            json!({ "tollgate.dev/inject": "true", "tollgate.dev/port": value }),
        );
        let err = refused(&pod, &no_labels(), value);
        assert_eq!(err.at, "tollgate.dev/port");
        assert!(
            err.message.contains(&format!("{value:?}")) && err.message.contains(way_out),
            "{}",
            err.message
        );
    }
}

#[test]
fn pods_without_an_mcp_port_have_nothing_to_protect_and_are_skipped_with_a_warning() {
    let unnamed = with(
        opted_in(),
        "/spec/containers/0/ports",
        json!([{ "containerPort": 8000 }]),
    );
    let Injection::Skip { reason, warn } = run(&unnamed, &no_labels()) else {
        panic!()
    };
    assert!(warn && reason.contains("tollgate.dev/port"), "{reason}");
    let host = with(unnamed, "/spec/hostNetwork", json!(true));
    assert!(matches!(
        run(&host, &enabled_namespace()),
        Injection::Skip { .. }
    ));
}

#[test]
fn the_port_annotation_picks_the_upstream_by_number_or_by_name() {
    // (annotation, upstream the sidecar forwards to, name of the sidecar's port)
    let cases = [
        ("9000", "http://localhost:9000", "metrics"),
        ("7777", "http://localhost:7777", "tollgate-proxy"),
        ("metrics", "http://localhost:9000", "metrics"),
    ];
    for (port, upstream, port_name) in cases {
        let pod = annotated(
            mk_pod(),
            json!({"tollgate.dev/inject": "true", "tollgate.dev/port": port}),
        );
        let pod = injected(&pod, &no_labels());
        let c = sidecar(&pod);
        assert_eq!(env(c, "TOLLGATE_UPSTREAM"), Some(upstream), "port {port}");
        let name = c.ports.as_ref().unwrap()[0].name.as_deref();
        assert_eq!(
            name,
            Some(port_name),
            "port {port}: the named port is handed over"
        );
    }
}

#[test]
fn per_pod_annotations_override_image_log_level_and_resources() {
    let pod = annotated(
        mk_pod(),
        json!({
            "tollgate.dev/inject": "true",
            "tollgate.dev/proxy-image": "registry.local/tollgate:dev",
            "tollgate.dev/log-level": "debug",
            "tollgate.dev/proxy-memory-limit": "128Mi",
            "tollgate.dev/proxy-cpu-request": "50m",
        }),
    );
    let pod = injected(&pod, &no_labels());
    let c = sidecar(&pod);
    assert_eq!(c.image.as_deref(), Some("registry.local/tollgate:dev"));
    assert_eq!(env(c, "TOLLGATE_LOG"), Some("debug"));
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "50m");
}

#[test]
fn bad_annotations_refuse_the_pod_naming_the_annotation() {
    let cases = [
        (json!({"tollgate.dev/inject": "yes"}), "tollgate.dev/inject"),
        (
            json!({"tollgate.dev/inject": "true", "tollgate.dev/port": "70000"}),
            "tollgate.dev/port",
        ),
        (
            json!({"tollgate.dev/inject": "true", "tollgate.dev/proxy-memory-limit": "lots"}),
            "tollgate.dev/proxy-memory-limit",
        ),
        (
            json!({"tollgate.dev/inject": "true", "tollgate.dev/default-action": "maybe"}),
            "tollgate.dev/default-action",
        ),
    ];
    for (annotations, named) in cases {
        let err = refused(
            &annotated(mk_pod(), annotations.clone()),
            &no_labels(),
            &annotations.to_string(),
        );
        assert_eq!(err.at, named);
    }
}

#[test]
fn redirect_mode_runs_init_redirect_first_as_root_with_net_admin_and_net_raw_only() {
    let pod = injected(&opted_in(), &no_labels());
    let init = &init_containers(&pod)[0];
    assert_eq!(init.name, "tollgate-init");
    assert_eq!(
        init.image.as_deref(),
        Some("ghcr.io/tollgate-dev/tollgate:test"),
        "the sidecar's image"
    );
    assert_eq!(
        init.args.as_deref().unwrap(),
        [
            "init-redirect",
            "--port",
            "8000",
            "--proxy-port",
            "15480",
            "--proxy-uid",
            "2417",
            "--proxy-gid",
            "2417"
        ]
    );
    assert_eq!(
        init.restart_policy, None,
        "it runs to completion before the sidecar starts"
    );
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert_eq!(
        sidecar(&pod).security_context.as_ref().unwrap().run_as_user,
        Some(2417)
    );
    let status: Value =
        serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()["tollgate.dev/status"])
            .unwrap();
    assert!(
        status["boundary"].as_str().unwrap().starts_with("redirect"),
        "{status}"
    );
}

#[test]
fn redirect_mode_moves_the_apps_probes_on_the_mcp_port_to_the_sidecar_which_runs_them() {
    let pod = with(
        opted_in(),
        "/spec/containers/0/startupProbe",
        json!({ "httpGet": { "path": "/metrics", "port": 9000 }, "periodSeconds": 2 }),
    );
    let pod = with(
        pod,
        "/spec/containers/0/readinessProbe",
        json!({ "httpGet": { "path": "/health", "port": "mcp", "httpHeaders": [{"name": "X-Probe", "value": "1"}] },
                "timeoutSeconds": 3, "periodSeconds": 7 }),
    );
    let pod = injected(&pod, &no_labels());
    let app = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        http_get(&app.readiness_probe),
        json!({ "path": "/app-health/server/readiness", "port": 15481, "scheme": "HTTP" })
    );
    let readiness = app.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (readiness.period_seconds, readiness.timeout_seconds),
        (Some(7), Some(3)),
        "timing stays"
    );
    assert_eq!(
        http_get(&app.liveness_probe),
        json!({ "path": "/app-health/server/liveness", "port": 15481, "scheme": "HTTP" }),
        "a TCP probe on the port becomes the sidecar's check of it"
    );
    assert!(app.liveness_probe.as_ref().unwrap().tcp_socket.is_none());
    assert_eq!(
        http_get(&app.startup_probe),
        json!({ "path": "/metrics", "port": 9000 }),
        "a probe on another port is not redirected, so it stays"
    );
    let handed: AppProbes =
        serde_json::from_str(env(sidecar(&pod), "TOLLGATE_APP_PROBES").unwrap()).unwrap();
    assert_eq!(
        handed,
        AppProbes::from([
            (
                "server/liveness".into(),
                AppProbe::TcpSocket {
                    port: 8000,
                    timeout_seconds: 1
                }
            ),
            (
                "server/readiness".into(),
                AppProbe::HttpGet {
                    port: 8000,
                    path: "/health".into(),
                    headers: vec![("X-Probe".into(), "1".into())],
                    timeout_seconds: 3
                }
            ),
        ])
    );
}

#[test]
fn redirect_mode_is_refused_where_it_could_not_hold_naming_why_and_the_way_out() {
    let psa = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".into(),
        "baseline".into(),
    )]);
    let cases = [
        (
            "a namespace enforcing Pod Security baseline",
            opted_in(),
            psa.clone(),
            "Pod Security \"baseline\"",
        ),
        (
            "an app container running as the sidecar's UID",
            with(
                opted_in(),
                "/spec/containers/0/securityContext",
                json!({ "runAsUser": 2417 }),
            ),
            no_labels(),
            "spec.containers[0] (server) runs as UID 2417",
        ),
        (
            "a pod whose default UID is the sidecar's",
            with(
                opted_in(),
                "/spec/securityContext",
                json!({ "runAsUser": 2417 }),
            ),
            no_labels(),
            "runs as UID 2417",
        ),
        (
            "a container that could remove the rules",
            with(
                opted_in(),
                "/spec/containers/0/securityContext",
                json!({ "capabilities": { "add": ["NET_ADMIN"] } }),
            ),
            no_labels(),
            "adds the capability NET_ADMIN",
        ),
        (
            "a privileged container",
            with(
                opted_in(),
                "/spec/containers/0/securityContext",
                json!({ "privileged": true }),
            ),
            no_labels(),
            "is privileged",
        ),
    ];
    for (what, pod, ns, says) in cases {
        let err = refused(&pod, &ns, what);
        assert_eq!(err.at, "tollgate.dev/boundary", "{what}");
        assert!(err.message.contains(says), "{what}: {}", err.message);
        if what.starts_with("a namespace") || what.contains("remove") || what.contains("privileged")
        {
            assert!(
                err.message.contains("network-policy"),
                "{what}: says the way out"
            );
            assert!(
                matches!(
                    run(&network_policy_boundary(pod), &ns),
                    Injection::Patch { .. }
                ),
                "{what}: the port handoff needs no privilege"
            );
        }
    }
    let bad = annotated(
        mk_pod(),
        json!({"tollgate.dev/inject": "true", "tollgate.dev/boundary": "iptables"}),
    );
    let err = refused(&bad, &no_labels(), "refused");
    assert_eq!(err.at, "tollgate.dev/boundary");
}

/// Applies the patch to the pod as the API server holds it (raw JSON, fields the operator's
/// types do not know included) and returns the result with the patch's paths.
fn patched_raw(pod: &Value) -> (Value, Vec<String>) {
    let Injection::Patch { patch, .. } = run(pod, &no_labels()) else {
        panic!("expected a patch")
    };
    let paths = serde_json::to_value(&patch)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_string())
        .collect();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    (doc, paths)
}

#[test]
fn the_patch_touches_only_what_injection_adds_or_changes_and_keeps_fields_it_does_not_know() {
    // Another mesh's init container, a volume, and fields newer than the operator's types.
    let pod = with(
        opted_in(),
        "/spec/initContainers",
        json!([{ "name": "istio-init", "image": "istio/proxyv2", "futureField": { "x": 1 } }]),
    );
    let pod = with(
        pod,
        "/spec/volumes",
        json!([{ "name": "data", "emptyDir": {} }]),
    );
    let pod = with(pod, "/spec/containers/0/futureField", json!("kept"));
    let pod = with(pod, "/spec/futurePodField", json!(true));
    let (doc, paths) = patched_raw(&pod);

    let init: Vec<&str> = doc["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["tollgate-init", "tollgate-proxy", "istio-init"]);
    assert_eq!(
        doc["spec"]["initContainers"][2], pod["spec"]["initContainers"][0],
        "an existing init container is not rewritten"
    );
    assert_eq!(doc["spec"]["containers"][0]["futureField"], "kept");
    assert_eq!(doc["spec"]["futurePodField"], true);
    let volumes: Vec<&str> = doc["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["data", "tollgate-token", "tollgate-no-api-token"]);
    for path in &paths {
        let ours = path == "/spec/initContainers/0"
            || path == "/spec/volumes/-"
            || path.starts_with("/spec/containers/0/ports/0/name")
            || path.starts_with("/spec/containers/0/readinessProbe/")
            || path.starts_with("/spec/containers/0/livenessProbe/")
            || path == "/metadata/annotations/tollgate.dev~1status"
            || path == "/metadata/labels/tollgate.dev~1injected";
        assert!(
            ours,
            "the patch touches {path}, which injection neither adds nor changes"
        );
    }
}

#[test]
fn lifecycle_hooks_on_the_mcp_port_still_reach_the_app_in_either_mode() {
    let pod = with(
        opted_in(),
        "/spec/containers/0/lifecycle",
        json!({ "preStop": { "httpGet": { "path": "/drain", "port": "mcp" } },
                "postStart": { "exec": { "command": ["true"] } } }),
    );
    let redirected = injected(&pod, &no_labels());
    let app = &redirected.spec.as_ref().unwrap().containers[0];
    let lifecycle = serde_json::to_value(app.lifecycle.as_ref().unwrap()).unwrap();
    assert_eq!(
        lifecycle["preStop"]["httpGet"],
        json!({ "path": "/app-health/server/preStop", "port": 15481, "scheme": "HTTP" }),
        "redirected, the hook would reach the sidecar: the sidecar runs it against the app"
    );
    assert_eq!(
        lifecycle["postStart"],
        json!({ "exec": { "command": ["true"] } }),
        "exec hooks stay"
    );
    let handed: AppProbes =
        serde_json::from_str(env(sidecar(&redirected), "TOLLGATE_APP_PROBES").unwrap()).unwrap();
    assert!(
        matches!(&handed["server/preStop"], AppProbe::HttpGet { port: 8000, path, .. } if path == "/drain")
    );

    let handed_off = injected(&network_policy_boundary(pod), &no_labels());
    let app = &handed_off.spec.as_ref().unwrap().containers[0];
    let lifecycle = serde_json::to_value(app.lifecycle.as_ref().unwrap()).unwrap();
    assert_eq!(
        lifecycle["preStop"]["httpGet"]["port"], "tollgate-app",
        "the hook follows the renamed port"
    );
}

#[test]
fn a_pod_whose_names_or_ports_collide_with_what_injection_adds_is_refused_naming_the_field() {
    let cases = [
        (
            with(
                opted_in(),
                "/spec/containers/0/name",
                json!("tollgate-proxy"),
            ),
            "spec.containers[0].name",
        ),
        (
            with(
                opted_in(),
                "/spec/initContainers",
                json!([{ "name": "tollgate-init", "image": "x" }]),
            ),
            "spec.initContainers[0].name",
        ),
        (
            with(
                opted_in(),
                "/spec/containers/0/ports/1",
                json!({ "name": "metrics", "containerPort": 15481 }),
            ),
            "spec.containers[0].ports[1].containerPort",
        ),
        (
            with(
                opted_in(),
                "/spec/containers/0/ports/1",
                json!({ "name": "tollgate-app", "containerPort": 9000 }),
            ),
            "spec.containers[0].ports[1].name",
        ),
        (
            with(
                opted_in(),
                "/spec/volumes",
                json!([{ "name": "tollgate-token", "emptyDir": {} }]),
            ),
            "spec.volumes[0].name",
        ),
        (
            annotated(
                mk_pod(),
                json!({ "tollgate.dev/inject": "true", "tollgate.dev/port": "15480" }),
            ),
            "tollgate.dev/port",
        ),
    ];
    for (pod, at) in cases {
        let err = refused(&pod, &no_labels(), at);
        assert_eq!(err.at, at, "{}", err.message);
    }
}

#[test]
fn a_host_port_on_the_mcp_port_stays_behind_the_redirect_and_moves_to_the_sidecar_with_the_network_policy_boundary()
 {
    let pod = with(
        opted_in(),
        "/spec/containers/0/ports/0",
        json!({ "name": "mcp", "containerPort": 8000, "hostPort": 18000, "hostIP": "10.0.0.5" }),
    );
    let Injection::Patch { warnings, .. } = run(&pod, &no_labels()) else {
        panic!()
    };
    assert!(
        warnings.is_empty(),
        "redirected in the pod's namespace: {warnings:?}"
    );
    let redirected = injected(&pod, &no_labels());
    let app = &redirected.spec.as_ref().unwrap().containers[0];
    assert_eq!(app.ports.as_ref().unwrap()[0].host_port, Some(18000));

    let pod = injected(&network_policy_boundary(pod), &no_labels());
    let app = &pod.spec.as_ref().unwrap().containers[0];
    let app_port = &app.ports.as_ref().unwrap()[0];
    assert_eq!(
        (app_port.host_port, app_port.host_ip.as_deref()),
        (None, None),
        "the app publishes nothing on the node"
    );
    let published = &sidecar(&pod).ports.as_ref().unwrap()[0];
    assert_eq!(
        (
            published.container_port,
            published.host_port,
            published.host_ip.as_deref()
        ),
        (15480, Some(18000), Some("10.0.0.5")),
        "the node's port now reaches the sidecar"
    );
    let status: Value =
        serde_json::from_str(&pod.metadata.annotations.unwrap()["tollgate.dev/status"]).unwrap();
    assert_eq!(status["hostPortsMoved"], json!([18000]));
}

#[test]
fn the_network_policy_boundary_labels_the_pod_with_its_app_port_and_asks_for_the_policy_first() {
    let pod = network_policy_boundary(opted_in());
    let Injection::Patch { network_policy, .. } = run(&pod, &no_labels()) else {
        panic!()
    };
    assert_eq!(network_policy, Some(8000));
    let patched = injected(&pod, &no_labels());
    let labels = patched.metadata.labels.clone().unwrap();
    assert_eq!(labels["tollgate.dev/app-port"], "8000");
    assert_eq!(labels["tollgate.dev/injected"], "true");
    assert!(
        !init_containers(&patched)
            .iter()
            .any(|c| c.name == "tollgate-init"),
        "no privileged init container"
    );
    let status: Value =
        serde_json::from_str(&patched.metadata.annotations.unwrap()["tollgate.dev/status"])
            .unwrap();
    assert!(
        status["boundary"].as_str().unwrap().starts_with(
            "network-policy: NetworkPolicy tollgate-boundary-8000 admits every port but 8000"
        ),
        "{status}"
    );

    let Injection::Patch { network_policy, .. } = run(&opted_in(), &no_labels()) else {
        panic!()
    };
    assert_eq!(network_policy, None, "the redirect needs no NetworkPolicy");
    let redirected = injected(&opted_in(), &no_labels());
    assert!(
        !redirected
            .metadata
            .labels
            .unwrap()
            .contains_key("tollgate.dev/app-port")
    );
}

#[test]
fn windows_pods_and_contradicting_resources_are_refused() {
    for (pod, at) in [
        (
            with(
                opted_in(),
                "/spec/nodeSelector",
                json!({ "kubernetes.io/os": "windows" }),
            ),
            "spec.nodeSelector",
        ),
        (
            with(opted_in(), "/spec/os", json!({ "name": "windows" })),
            "spec.os.name",
        ),
    ] {
        let err = refused(&pod, &no_labels(), "windows");
        assert_eq!(err.at, at);
        assert!(err.message.contains("Windows"), "{}", err.message);
    }
    let pod = annotated(
        mk_pod(),
        json!({ "tollgate.dev/inject": "true", "tollgate.dev/proxy-memory-request": "64Mi", "tollgate.dev/proxy-memory-limit": "16Mi" }),
    );
    let err = refused(&pod, &no_labels(), "refused");
    assert_eq!(err.at, "tollgate.dev/proxy-memory-limit");
    assert!(
        err.message.contains("memory request is above its limit"),
        "{}",
        err.message
    );
    let pod = annotated(
        mk_pod(),
        json!({ "tollgate.dev/inject": "true", "tollgate.dev/proxy-cpu-request": "1", "tollgate.dev/proxy-cpu-limit": "500m" }),
    );
    let err = refused(&pod, &no_labels(), "refused");
    assert_eq!(err.at, "tollgate.dev/proxy-cpu-limit");
    let fine = annotated(
        mk_pod(),
        json!({ "tollgate.dev/inject": "true", "tollgate.dev/proxy-memory-limit": "1Gi" }),
    );
    assert!(matches!(run(&fine, &no_labels()), Injection::Patch { .. }));
}

#[test]
fn with_a_shared_process_namespace_a_container_that_could_read_the_sidecars_token_is_refused() {
    let shared = with(
        network_policy_boundary(opted_in()),
        "/spec/shareProcessNamespace",
        json!(true),
    );
    assert!(
        matches!(run(&shared, &no_labels()), Injection::Patch { .. }),
        "sharing alone is fine"
    );
    for (context, why) in [
        (
            json!({ "capabilities": { "add": ["SYS_PTRACE"] } }),
            "SYS_PTRACE",
        ),
        (json!({ "runAsUser": 2417 }), "UID 2417"),
    ] {
        let pod = with(
            shared.clone(),
            "/spec/containers/0/securityContext",
            context,
        );
        let err = refused(&pod, &no_labels(), "refused");
        assert_eq!(err.at, "spec.containers[0].securityContext");
        assert!(
            err.message.contains(why) && err.message.contains("sidecar's token"),
            "{}",
            err.message
        );
    }
}

#[test]
fn shared_counters_reach_the_sidecar_grouped_by_workload_with_the_password_mounted() {
    let mut cfg = config();
    cfg.counters = Some(SharedCounters {
        nodes: "redis://redis-0:6379,redis://redis-1:6379".into(),
        cluster: true,
        timeout: "50ms".into(),
        password_secret: Some(("redis".into(), "secret".into())),
    });
    // A Deployment's pod names its ReplicaSet: its replicas, across rollouts, share counters.
    let pod = with(
        with(
            opted_in(),
            "/metadata/ownerReferences",
            json!([{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "github-7d9f8c", "uid": "u", "controller": true }]),
        ),
        "/metadata/labels",
        json!({ "app": "github", "pod-template-hash": "7d9f8c" }),
    );
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let Injection::Patch { patch, .. } = inject_sidecar(&typed, &no_labels(), &cfg).unwrap() else {
        panic!("expected a patch")
    };
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    let after: Pod = serde_json::from_value(doc).unwrap();
    let c = sidecar(&after);
    assert_eq!(
        env(c, "TOLLGATE_COUNTERS"),
        Some("redis://redis-0:6379,redis://redis-1:6379")
    );
    assert_eq!(env(c, "TOLLGATE_COUNTERS_CLUSTER"), Some("true"));
    assert_eq!(env(c, "TOLLGATE_COUNTERS_TIMEOUT"), Some("50ms"));
    assert_eq!(
        env(c, "TOLLGATE_COUNTERS_GROUP"),
        Some("agents/Deployment/github")
    );
    let file = env(c, "TOLLGATE_COUNTERS_PASSWORD_FILE").unwrap();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| file.starts_with(&m.mount_path))
        .expect("the password file is mounted");
    let volume = after
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("redis"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "secret");
    assert_eq!(secret.optional, Some(false), "no password, no start");
    // Only the sidecar mounts it.
    let app = &after.spec.as_ref().unwrap().containers[0];
    assert!(
        app.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != mount.name)
    );

    // The annotation shares counters between workloads; a brace would move the hash tag.
    let shared = annotated(
        pod.clone(),
        json!({ "tollgate.dev/inject": "true", "tollgate.dev/counters-group": "team-a" }),
    );
    let typed: Pod = serde_json::from_value(shared).unwrap();
    let Injection::Patch { patch, .. } = inject_sidecar(&typed, &no_labels(), &cfg).unwrap() else {
        panic!("expected a patch")
    };
    assert!(
        serde_json::to_string(&patch)
            .unwrap()
            .contains("\"team-a\"")
    );
    let bad = annotated(
        pod,
        json!({ "tollgate.dev/inject": "true", "tollgate.dev/counters-group": "a{b}" }),
    );
    let typed: Pod = serde_json::from_value(bad).unwrap();
    let err = inject_sidecar(&typed, &no_labels(), &cfg).unwrap_err();
    assert_eq!(err.at, "tollgate.dev/counters-group");
}

#[test]
fn without_shared_counters_the_sidecar_counts_alone() {
    let after = injected(&opted_in(), &no_labels());
    assert_eq!(env(sidecar(&after), "TOLLGATE_COUNTERS"), None);
}

#[test]
fn a_container_declaring_the_sidecars_uid_or_gid_is_refused_and_a_pod_may_choose_others() {
    for (context, why) in [
        (json!({ "runAsUser": 2417 }), "runs as UID 2417"),
        (
            json!({ "runAsUser": 1000, "runAsGroup": 2417 }),
            "runs as GID 2417",
        ),
    ] {
        let pod = with(opted_in(), "/spec/containers/0/securityContext", context);
        let err = refused(&pod, &no_labels(), why);
        assert!(
            err.message.contains(why) && err.message.contains("tollgate.dev/proxy-uid"),
            "{}",
            err.message
        );
    }
    // The pod chooses the sidecar's identity and ports: its container keeps 2417 and 15480.
    let pod = annotated(
        with(
            mk_pod(),
            "/spec/containers/0/securityContext",
            json!({ "runAsUser": 2417, "runAsGroup": 2417 }),
        ),
        json!({ "tollgate.dev/inject": "true", "tollgate.dev/proxy-uid": "3001", "tollgate.dev/proxy-gid": "3002",
                "tollgate.dev/proxy-port": "16000", "tollgate.dev/admin-port": "16001" }),
    );
    let pod = injected(&pod, &no_labels());
    let init = &init_containers(&pod)[0];
    let args = init.args.as_deref().unwrap();
    assert_eq!(
        &args[3..],
        [
            "--proxy-port",
            "16000",
            "--proxy-uid",
            "3001",
            "--proxy-gid",
            "3002"
        ]
    );
    let c = sidecar(&pod);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(3001), Some(3002)));
    assert_eq!(env(c, "TOLLGATE_LISTEN"), Some("[::]:16000"));
    assert_eq!(env(c, "TOLLGATE_METRICS_LISTEN"), Some("[::]:16001"));
}

#[test]
fn the_sidecars_identity_annotations_must_be_numbers_it_can_use() {
    for (annotation, value) in [
        ("tollgate.dev/proxy-uid", "0"),
        ("tollgate.dev/proxy-uid", "nobody"),
        ("tollgate.dev/proxy-gid", "-1"),
        ("tollgate.dev/proxy-port", "70000"),
        ("tollgate.dev/admin-port", "15480"),
    ] {
        let pod = annotated(
            mk_pod(),
            json!({ "tollgate.dev/inject": "true", annotation: value }),
        );
        assert_eq!(refused(&pod, &no_labels(), value).at, annotation);
    }
}

#[test]
fn the_operators_approval_url_reaches_every_injected_sidecar() {
    let pod = injected(&opted_in(), &no_labels());
    assert_eq!(env(sidecar(&pod), "TOLLGATE_APPROVAL_URL"), None);
    let config = InjectConfig {
        approval_url: Some("https://approvals.example.com/{name}".into()),
        ..config()
    };
    let pod = injected_with(&opted_in(), &no_labels(), &config);
    assert_eq!(
        env(sidecar(&pod), "TOLLGATE_APPROVAL_URL"),
        Some("https://approvals.example.com/{name}")
    );
}

#[test]
fn the_operators_collector_reaches_every_injected_sidecar_with_the_pod_as_its_resource() {
    let pod = injected(&opted_in(), &no_labels());
    assert_eq!(env(sidecar(&pod), "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
    let config = InjectConfig {
        tracing: Some(tollgate_operator::inject::SidecarTracing {
            endpoint: "http://collector.monitoring:4318".into(),
            sampling: 0.25,
        }),
        ..config()
    };
    let pod = injected_with(&opted_in(), &no_labels(), &config);
    let c = sidecar(&pod);
    assert_eq!(
        env(c, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://collector.monitoring:4318")
    );
    assert_eq!(env(c, "OTEL_TRACES_SAMPLER_ARG"), Some("0.25"));
    assert_eq!(
        env(c, "OTEL_RESOURCE_ATTRIBUTES"),
        Some("k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)")
    );
    // $(VAR) expands only from variables defined before it.
    let names: Vec<&str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at("POD_NAME") < at("OTEL_RESOURCE_ATTRIBUTES"));
    assert!(at("POD_NAMESPACE") < at("OTEL_RESOURCE_ATTRIBUTES"));
}

#[test]
fn the_operator_can_have_every_injected_sidecar_read_http1_with_hyper() {
    let pod = injected(&opted_in(), &no_labels());
    assert_eq!(
        env(sidecar(&pod), "TOLLGATE_HTTP1"),
        None,
        "Tollgate's own by default"
    );
    let config = InjectConfig {
        hyper_http1: true,
        ..config()
    };
    let pod = injected_with(&opted_in(), &no_labels(), &config);
    assert_eq!(env(sidecar(&pod), "TOLLGATE_HTTP1"), Some("hyper"));
}
