//! The OpenAPI 3 document at `/api/v1/openapi.json`, generated at startup
//! from [`ROUTES`](super::ROUTES) (paths, methods, summaries, parameters,
//! bodies, answers) and the views' and specs' `ToSchema` derives: nothing
//! in it is written by hand, so it cannot drift from what the API does.

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Required,
    ResponseBuilder, ResponsesBuilder, Type,
};
use utoipa::ToSchema;

use super::body::{no_params, schema};
use super::{Answer, Body, Route, ROUTES};

pub const DOCUMENT: Route = Route {
    method: "GET",
    path: "/api/v1/openapi.json",
    grpc: "/kvmesh.v1.Cluster/OpenApi",
    summary: "This document",
    handler: || get(document),
    query: no_params,
    body: Body::None,
    answer: Answer::Json(|| ObjectBuilder::new().build().into()),
};

/// A refusal (RFC 9457), as every error is answered.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// Always about:blank.
    r#type: String,
    /// The gRPC code's name (NotFound, PermissionDenied, …).
    title: String,
    status: u16,
    /// The gRPC message: what was wrong and what to do.
    detail: String,
}

async fn document() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| build().to_json().expect("the document serializes"));
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}

/// The document.
pub fn build() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut by_path: Vec<(&str, PathItem)> = Vec::new();
    for route in ROUTES {
        let op = operation(route);
        let method = match route.method {
            "GET" => HttpMethod::Get,
            "PUT" => HttpMethod::Put,
            "POST" => HttpMethod::Post,
            "DELETE" => HttpMethod::Delete,
            other => unreachable!("route {} has method {other}", route.path),
        };
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, item)) => set(item, method, op),
            None => by_path.push((route.path, PathItem::new(method, op))),
        }
    }
    for (path, item) in by_path {
        paths = paths.path(path, item);
    }
    let mut components = ComponentsBuilder::new()
        .schemas_from_iter(crate::view::schemas())
        .security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    let mut extra = Vec::new();
    macro_rules! add {
        ($($t:ty),* $(,)?) => {$(
            extra.push((<$t>::name().into_owned(), <$t as utoipa::PartialSchema>::schema()));
            <$t>::schemas(&mut extra);
        )*};
    }
    add!(
        Problem,
        super::spec::VmSpec,
        super::cluster::PolicySpec,
        super::cluster::BalanceSpec,
        super::cluster::TokenSpec,
        super::vms::MigrateSpec,
        super::vms::Migration,
        super::vms::ConsoleOutput,
        super::resources::StorageSpec,
        super::resources::NetworkSpec,
        // Query parameters' types are referenced, not collected.
        super::resources::ImageKind,
    );
    components = components.schemas_from_iter(extra);
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("kvmesh")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "kvmesh's REST API, on every node's gRPC port. Authenticate with an API token \
                     (`Authorization: Bearer …`) or a client certificate; writes reach the leader wherever they \
                     are sent. Every route is one gRPC method, with its role and its messages.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some(vec![SecurityRequirement::new("token", Vec::<String>::new())]))
        .build()
}

fn set(item: &mut PathItem, method: HttpMethod, op: Operation) {
    match method {
        HttpMethod::Get => item.get = Some(op),
        HttpMethod::Put => item.put = Some(op),
        HttpMethod::Post => item.post = Some(op),
        HttpMethod::Delete => item.delete = Some(op),
        _ => unreachable!("only GET, PUT, POST and DELETE routes"),
    }
}

/// One route's operation: its id (the gRPC method's name, made unique by
/// the path), its parameters, body and answers.
fn operation(route: &Route) -> Operation {
    let mut parameters = (route.query)();
    for segment in route.path.split('/').filter(|s| s.starts_with('{')) {
        let name = segment.trim_matches(|c| c == '{' || c == '}');
        let mut value = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        if let Some(pattern) = name_pattern(route.path) {
            value = value.pattern(Some(pattern));
        }
        parameters.insert(
            0,
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(value))
                .build(),
        );
    }
    let problem = ResponseBuilder::new()
        .description("Refused: a problem document with the gRPC message")
        .content("application/problem+json", ContentBuilder::new().schema(Some(schema::<Problem>())).build())
        .build();
    let json_answer = |description: &str, s| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(s)).build())
            .build()
    };
    let mut responses = ResponsesBuilder::new();
    responses = match &route.answer {
        Answer::Json(s) if route.method == "PUT" => {
            responses.response("200", json_answer("As written", s())).response("201", json_answer("Made", s()))
        }
        Answer::Json(s) if route.method == "POST" && route.path == "/api/v1/tokens" => {
            responses.response("201", json_answer("Made", s()))
        }
        Answer::Json(s) => responses.response("200", json_answer("OK", s())),
        Answer::Events => responses.response(
            "200",
            ResponseBuilder::new()
                .description("Server-Sent Events: each `data:` one event as JSON, its id the sequence number")
                .content("text/event-stream", ContentBuilder::new().build())
                .build(),
        ),
        Answer::Nothing if route.path == "/api/v1/vms/{name}" => {
            responses.response("202", ResponseBuilder::new().description("Deleting").build())
        }
        Answer::Nothing => responses.response("204", ResponseBuilder::new().description("Done").build()),
        Answer::WebSocket => responses.response(
            "101",
            ResponseBuilder::new()
                .description("Switching to a WebSocket (HTTP/1.1 `Upgrade: websocket` only); binary messages both ways")
                .build(),
        ),
    };
    if matches!(route.answer, Answer::Json(_)) && route.method == "GET" {
        responses =
            responses.response("304", ResponseBuilder::new().description("Not modified (If-None-Match)").build());
    }
    let id = format!("{}{}", route.method.to_lowercase(), route.path.replace(['{', '}'], "").replace('/', "_"));
    let mut op = OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(route.summary))
        .description(Some(format!("gRPC: `{}`", route.grpc)))
        .parameters(Some(parameters))
        .responses(responses.response("default", problem).build());
    op = match &route.body {
        Body::None => op,
        Body::Json(s) | Body::OptionalJson(s) => op.request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", ContentBuilder::new().schema(Some(s())).build())
                .required(Some(if matches!(route.body, Body::Json(_)) { Required::True } else { Required::False }))
                .build(),
        )),
        Body::Bytes => op.request_body(Some(
            RequestBodyBuilder::new()
                .content("application/octet-stream", ContentBuilder::new().build())
                .required(Some(Required::True))
                .build(),
        )),
    };
    op.build()
}

/// What a name in the path may be, where one is made by a PUT: the rules
/// of `config::validate_vm_name` and `config::validate_object_name`.
fn name_pattern(path: &str) -> Option<&'static str> {
    if path.starts_with("/api/v1/vms/") {
        Some("^[a-z0-9-]{1,63}$")
    } else if ["/api/v1/storage/", "/api/v1/images/", "/api/v1/networks/"].iter().any(|p| path.starts_with(p)) {
        Some("^[a-z0-9_-][a-z0-9._-]{0,62}$")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_name_patterns_are_the_validators_rules() {
        let vm = regex_lite(super::name_pattern("/api/v1/vms/{name}").unwrap());
        for name in ["web-1", "a", "0"] {
            assert!(vm(name) && crate::config::validate_vm_name(name).is_ok(), "{name}");
        }
        for name in ["Web", "a.b", "", "a_b"] {
            assert!(!vm(name) && crate::config::validate_vm_name(name).is_err(), "{name}");
        }
        let object = regex_lite(super::name_pattern("/api/v1/images/{name}").unwrap());
        for name in ["debian-12.qcow2", "_x", "a"] {
            assert!(object(name) && crate::config::validate_object_name("image", name).is_ok(), "{name}");
        }
        for name in [".hidden", "A", "a/b", ""] {
            assert!(!object(name) && crate::config::validate_object_name("image", name).is_err(), "{name}");
        }
    }

    /// The two patterns' shape only: `^[first][rest]{0,62}$` or `^[set]{1,63}$`.
    fn regex_lite(pattern: &'static str) -> impl Fn(&str) -> bool {
        let sets: Vec<&str> = pattern.split('[').skip(1).map(|s| s.split(']').next().unwrap()).collect();
        let allowed = |set: &str, c: char| {
            set.contains(c)
                || (set.contains("a-z") && c.is_ascii_lowercase())
                || (set.contains("0-9") && c.is_ascii_digit())
        };
        move |name: &str| {
            let (first, rest) = if sets.len() == 2 { (sets[0], sets[1]) } else { (sets[0], sets[0]) };
            let mut chars = name.chars();
            chars.next().is_some_and(|c| allowed(first, c)) && chars.all(|c| allowed(rest, c)) && name.len() <= 63
        }
    }

    #[test]
    fn every_route_is_in_the_document_and_every_reference_resolves() {
        let doc = serde_json::to_value(super::build()).unwrap();
        for route in super::ROUTES {
            let op = &doc["paths"][route.path][route.method.to_lowercase()];
            assert!(op.is_object(), "{} {} is missing", route.method, route.path);
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (at, _) in text.match_indices("#/components/schemas/") {
            let name: String = text[at + 21..].chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "{name} is referenced but not in the components");
        }
    }
}
