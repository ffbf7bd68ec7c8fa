//! Known mistakes in the spec data, each corrected in one place with the reason, and
//! reported as a warning so that a fixed spec shows the correction is no longer needed.

use crate::model::{AuthRequirement, AuthScheme, Group, Operation};

/// Operations the spec added without an `x-addedInMatrixVersion` mark, with the version that
/// added them (found by comparing the releases).
const MISSING_ADDED_IN: &[(Group, &str, &str)] = &[
    (Group::ClientServer, "getMutualRooms", "1.19"),
    (Group::ServerServer, "askPolicyServerToSign", "1.18"),
];

pub(crate) fn apply(op: &mut Operation, warnings: &mut Vec<String>) {
    if op.added_in.is_none() {
        if let Some((_, _, v)) = MISSING_ADDED_IN
            .iter()
            .find(|(g, id, _)| *g == op.group && *id == op.operation_id)
        {
            op.added_in = Some(v.to_string());
            warnings.push(format!(
                "{} {}: no x-addedInMatrixVersion; recorded as added in {v}",
                op.group.dir(),
                op.operation_id
            ));
        }
    }
    // v1.19: the federation timestamp_to_event operation lists `accessToken`, which
    // server-server files do not declare; every federation request is signed.
    if op.group == Group::ServerServer && op.auth_schemes.contains(&AuthScheme::AccessToken) {
        op.auth_schemes = vec![AuthScheme::ServerSignature];
        warnings.push(format!(
            "server-server {}: read `security: [accessToken]` as a signed federation request",
            op.operation_id
        ));
    }
    // v1.15+: getRoomSummary lists the federation `signedRequest` scheme, which a
    // client-server file does not declare; the operation's text says servers MAY allow
    // unauthenticated access, i.e. an access token is optional.
    if op.group == Group::ClientServer
        && op.operation_id == "getRoomSummary"
        && op.auth_schemes == [AuthScheme::ServerSignature]
    {
        op.auth_schemes = vec![AuthScheme::AccessToken];
        op.auth = AuthRequirement::Optional;
        warnings.push(
            "client-server getRoomSummary: read `security: [signedRequest]` as an optional access token".into(),
        );
    }
}
