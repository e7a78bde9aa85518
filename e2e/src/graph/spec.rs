//! Microsoft's OpenAPI description of the Graph v1.0 operations we use
//! (e2e/graph/graph-v1.0-subset.yaml): which operation a request is, which
//! permissions it takes, and whether a request or response body matches the
//! schema. Both the emulator (permission checks) and the fidelity tests
//! (every body validated) read it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

const SUBSET: &str = include_str!("../../graph/graph-v1.0-subset.yaml");

/// One operation of the document.
#[derive(Debug, Clone)]
pub struct Operation {
    pub method: String,
    /// The path as the document writes it, e.g. `/users/{user-id}/presence`.
    pub path: String,
    pub operation_id: String,
    /// Application permissions (roles) that allow it.
    pub application: Vec<String>,
    /// Delegated (work or school) permissions (scopes) that allow it.
    pub delegated: Vec<String>,
    request_schema: Option<Value>,
    response_schema: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no operation {method} {path} in the OpenAPI subset")]
    UnknownOperation { method: String, path: String },
    #[error("{what} of {method} {path} does not match the schema: {errors}")]
    Mismatch {
        what: &'static str,
        method: String,
        path: String,
        errors: String,
    },
}

pub struct Spec {
    document: Value,
    operations: Vec<Operation>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("operations", &self.operations.len())
            .finish()
    }
}

/// The subset, parsed once per process.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        Spec::parse(SUBSET).unwrap_or_else(|e| panic!("the bundled OpenAPI subset is broken: {e}"))
    })
}

fn permissions(op: &Value, key: &str) -> Vec<String> {
    op["x-subset-permissions"][key]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(|p| p.trim_end_matches(" (least privileged)").trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Spec {
    pub fn parse(yaml: &str) -> anyhow::Result<Self> {
        let mut document: Value = serde_yaml_ng::from_str(yaml)?;
        // OpenAPI 3.0 schema → JSON Schema, as the subset's README says.
        if let Some(components) = document.get_mut("components") {
            convert(components);
        }
        let mut operations = Vec::new();
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                if !matches!(method.as_str(), "get" | "post" | "patch" | "put" | "delete") {
                    continue;
                }
                let mut request_schema =
                    op["requestBody"]["content"]["application/json"]["schema"].clone();
                let mut response_schema =
                    op["responses"]["2XX"]["content"]["application/json"]["schema"].clone();
                convert(&mut request_schema);
                convert(&mut response_schema);
                operations.push(Operation {
                    method: method.to_ascii_uppercase(),
                    path: path.clone(),
                    operation_id: op["operationId"].as_str().unwrap_or_default().to_owned(),
                    application: permissions(op, "application"),
                    delegated: permissions(op, "delegatedWork"),
                    request_schema: (!request_schema.is_null()).then_some(request_schema),
                    response_schema: (!response_schema.is_null()).then_some(response_schema),
                });
            }
        }
        Ok(Self {
            document,
            operations,
            validators: Mutex::new(HashMap::new()),
        })
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The operation a request is. Graph accepts unqualified action names
    /// (`/presence/setPresence`, `/chats/getAllMessages`) where the document
    /// writes `microsoft.graph.setPresence` and `microsoft.graph.getAllMessages()`.
    pub fn find(&self, method: &str, path: &str) -> Option<&Operation> {
        let path = path.trim_end_matches('/');
        let path = path.strip_prefix("/v1.0").unwrap_or(path);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.operations.iter().find(|op| {
            op.method.eq_ignore_ascii_case(method) && {
                let template: Vec<&str> = op.path.trim_start_matches('/').split('/').collect();
                template.len() == segments.len()
                    && template
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| segment_matches(t, s))
            }
        })
    }

    fn validator(&self, key: &str, schema: &Value) -> anyhow::Result<Arc<jsonschema::Validator>> {
        let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(key) {
            return Ok(v.clone());
        }
        // The operation's schema at the root, the document's components beside
        // it so that `#/components/schemas/…` resolves.
        let mut root = match schema {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        root.insert("components".into(), self.document["components"].clone());
        let validator = Arc::new(
            jsonschema::draft7::new(&Value::Object(root)).map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        cache.insert(key.to_owned(), validator.clone());
        Ok(validator)
    }

    fn check(
        &self,
        what: &'static str,
        op: &Operation,
        schema: Option<&Value>,
        body: &Value,
    ) -> Result<(), SpecError> {
        let Some(schema) = schema else { return Ok(()) };
        let key = format!("{what} {} {}", op.method, op.path);
        let validator = self
            .validator(&key, schema)
            .map_err(|e| SpecError::Mismatch {
                what,
                method: op.method.clone(),
                path: op.path.clone(),
                errors: format!("schema does not compile: {e}"),
            })?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Mismatch {
                what,
                method: op.method.clone(),
                path: op.path.clone(),
                errors: errors.join("; "),
            })
        }
    }

    /// The operation the document defines for this request, or why there is none.
    fn operation(&self, method: &str, path: &str) -> Result<&Operation, SpecError> {
        self.find(method, path)
            .ok_or_else(|| SpecError::UnknownOperation {
                method: method.to_owned(),
                path: path.to_owned(),
            })
    }

    /// Checks a request: the operation exists and its JSON body matches.
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<&Operation, SpecError> {
        let op = self.operation(method, path)?;
        if let Some(body) = body {
            self.check_request(op, body)?;
        }
        Ok(op)
    }

    /// Checks a request body against the operation's schema.
    pub fn check_request(&self, op: &Operation, body: &Value) -> Result<(), SpecError> {
        self.check("request body", op, op.request_schema.as_ref(), body)
    }

    /// Checks a response: the operation exists and its body matches (see
    /// [`Spec::check_response`]).
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: Option<&Value>,
    ) -> Result<(), SpecError> {
        let op = self.operation(method, path)?;
        match body {
            Some(body) => self.check_response(op, status, body),
            None => Ok(()),
        }
    }

    /// Checks a response body: 2xx against the operation's schema, errors
    /// against Graph's error schema.
    pub fn check_response(
        &self,
        op: &Operation,
        status: u16,
        body: &Value,
    ) -> Result<(), SpecError> {
        if (200..300).contains(&status) {
            self.check("response body", op, op.response_schema.as_ref(), body)
        } else {
            let error_schema =
                json!({"$ref": "#/components/schemas/microsoft.graph.ODataErrors.ODataError"});
            self.check("error body", op, Some(&error_schema), body)
        }
    }
}

fn segment_matches(template: &str, segment: &str) -> bool {
    if template.starts_with('{') && template.ends_with('}') {
        return !segment.is_empty();
    }
    if template == segment {
        return true;
    }
    // microsoft.graph.setPresence ⇔ setPresence; microsoft.graph.getAllMessages() ⇔ getAllMessages
    let unqualified = template
        .strip_prefix("microsoft.graph.")
        .unwrap_or(template);
    let bare = unqualified.strip_suffix("()").unwrap_or(unqualified);
    segment == unqualified || segment == bare || segment.strip_suffix("()") == Some(bare)
}

/// OpenAPI 3.0 → JSON Schema (draft 7): `nullable` becomes a `null` type,
/// `additionalProperties` is permissive (real bodies carry `@odata.*`
/// annotations), and a property that is only a `$ref` to a complex type may be
/// `null`, as OData complex properties are unless declared otherwise.
fn convert(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("nullable").and_then(Value::as_bool) == Some(true) {
                map.remove("nullable");
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                } else if map.contains_key("anyOf")
                    || map.contains_key("allOf")
                    || map.contains_key("$ref")
                {
                    let inner = Value::Object(std::mem::take(map));
                    map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                }
            }
            if map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(true));
            }
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for prop in props.values_mut() {
                    let is_bare_ref = prop
                        .as_object()
                        .is_some_and(|p| p.len() == 1 && p.contains_key("$ref"));
                    let is_wrapped_ref = prop.as_object().is_some_and(|p| {
                        p.get("allOf")
                            .and_then(Value::as_array)
                            .is_some_and(|a| a.len() == 1)
                    });
                    if is_bare_ref || is_wrapped_ref {
                        let inner = prop.take();
                        *prop = json!({"anyOf": [inner, {"type": "null"}]});
                    }
                }
            }
            for v in map.values_mut() {
                convert(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(convert),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subset_parses_with_permissions() {
        let s = spec();
        assert!(s.operations().len() >= 38, "{}", s.operations().len());
        let op = s
            .find(
                "GET",
                "/users/8b08e8c3-1a2f-4d4a-9c7e-1a2b3c4d5e6f/presence",
            )
            .unwrap();
        assert_eq!(op.operation_id, "user_GetPresence");
        assert!(op.application.contains(&"Presence.Read.All".to_owned()));
        assert!(op.delegated.contains(&"Presence.Read".to_owned()));
    }

    #[test]
    fn unqualified_action_names_resolve() {
        let s = spec();
        assert!(
            s.find("POST", "/users/alice@contoso.com/presence/setPresence")
                .is_some()
        );
        assert!(
            s.find("POST", "/communications/getPresencesByUserId")
                .is_some()
        );
        assert!(s.find("GET", "/chats/getAllMessages").is_some());
        assert!(s.find("GET", "/v1.0/users").is_some());
        assert!(s.find("DELETE", "/users").is_none());
    }

    #[test]
    fn bodies_are_checked_against_the_schema() {
        let s = spec();
        let good = json!({"id": "x", "availability": "Available", "activity": "Available", "statusMessage": null});
        s.validate_response("GET", "/users/x/presence", 200, Some(&good))
            .unwrap();
        let bad = json!({"id": "x", "availability": 7});
        assert!(
            s.validate_response("GET", "/users/x/presence", 200, Some(&bad))
                .is_err()
        );
        let request = json!({"sessionId": "app", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H"});
        s.validate_request("POST", "/users/x/presence/setPresence", Some(&request))
            .unwrap();
        let error = json!({"error": {"code": "Forbidden", "message": "no", "innerError": {"date": "2026-01-01T00:00:00", "request-id": "r", "client-request-id": "c"}}});
        s.validate_response("GET", "/users/x/presence", 403, Some(&error))
            .unwrap();
        let not_an_error = json!({"error": "nope"});
        assert!(
            s.validate_response("GET", "/users/x/presence", 403, Some(&not_an_error))
                .is_err()
        );
    }
}
