// CDS Hooks 2.0 client logic of the demo page, without the DOM: requests, actions, ratings, feedback.
// Spec: https://cds-hooks.hl7.org/2.0/ ; PAMA rating extensions: Argonaut "CDS Hooks for PAMA".

export const PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating";
export const PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating";
export const PAMA_CONSULT_ID = "http://fhir.org/argonaut/Extension/pama-rating-consult-id";
export const PAMA_AUC_APPLIED = "http://fhir.org/argonaut/Extension/pama-rating-auc-applied";

export const RATING_LABELS = {
  appropriate: "Appropriate",
  "not-appropriate": "Not appropriate",
  "no-criteria-apply": "No criteria apply",
};

/** A random (version 4) UUID: hookInstance must be unguessable. */
export function uuid() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** "ServiceRequest/abc" for a resource. */
export function refOf(resource) {
  return `${resource.resourceType}/${resource.id}`;
}

/** The resource type a prefetch template reads ("Condition?patient=..." -> "Condition"). */
export function templateType(template) {
  const match = /^([A-Z][A-Za-z]+)[/?]/.exec(String(template).trim());
  return match ? match[1] : null;
}

/** Drop null, "", [] and {} members (CDS Hooks 2.0 forbids them). */
export function compact(value) {
  if (Array.isArray(value)) {
    const items = value.map(compact).filter((item) => item !== undefined);
    return items.length ? items : undefined;
  }
  if (value && typeof value === "object") {
    const entries = Object.entries(value)
      .map(([key, item]) => [key, compact(item)])
      .filter(([, item]) => item !== undefined);
    return entries.length ? Object.fromEntries(entries) : undefined;
  }
  if (value === null || value === "") return undefined;
  return value;
}

/**
 * A hook request.
 * hook: "order-select" | "order-sign"; basket: [{resource, selected}]; patient: {patientId, userId, encounterId};
 * prefetch: object or null (no prefetch member); fhir: {server, token} or null.
 */
export function buildHookRequest({ hook, basket, patient, prefetch, fhir }) {
  // Built member by member rather than compacted: prefetch values must travel untouched (null means
  // "the EHR has none", an absent key "the EHR could not provide it").
  const context = { userId: patient.userId, patientId: patient.patientId };
  if (patient.encounterId) context.encounterId = patient.encounterId;
  if (hook === "order-select") {
    context.selections = basket.filter((order) => order.selected).map((order) => refOf(order.resource));
  }
  context.draftOrders = { resourceType: "Bundle", type: "collection" };
  if (basket.length) context.draftOrders.entry = basket.map((order) => ({ resource: order.resource }));
  const request = { hook, hookInstance: uuid() };
  if (fhir) {
    request.fhirServer = fhir.server;
    if (fhir.token) {
      request.fhirAuthorization = {
        access_token: fhir.token,
        token_type: "Bearer",
        expires_in: 300,
        scope: "patient/*.read",
        subject: "cds-service-demo",
        patient: patient.patientId,
      };
    }
  }
  request.context = context;
  if (prefetch) request.prefetch = prefetch;
  return request;
}

/**
 * The prefetch to send for a bundled patient: every key the service asks for that the record has.
 * A key whose value is null is sent as null (the EHR has nothing); a key the record lacks is left out
 * (the EHR could not provide it), as the spec asks.
 */
export function prefetchFor(templates, record) {
  if (!record) return null;
  const prefetch = {};
  for (const key of Object.keys(templates)) {
    if (Object.prototype.hasOwnProperty.call(record, key)) prefetch[key] = record[key];
  }
  return prefetch;
}

/** The system actions of a response: top-level (2.0) and extension.systemActions (legacy), de-duplicated. */
export function systemActionsOf(response) {
  const all = [...(response?.systemActions ?? []), ...(response?.extension?.systemActions ?? [])];
  const seen = new Set();
  return all.filter((action) => {
    const key = JSON.stringify([action.type, action.resourceId ?? null, action.resource ?? null]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** The PAMA rating carried by a resource's extensions, or null. */
export function ratingOf(resource) {
  const extensions = resource?.extension ?? [];
  const rating = extensions.find((ext) => ext.url === PAMA_RATING);
  if (!rating) return null;
  const codings = rating.valueCodeableConcept?.coding ?? [];
  const pama = codings.find((coding) => coding.system === PAMA_RATING_SYSTEM);
  if (!pama) return null;
  const other = codings.find((coding) => coding.system !== PAMA_RATING_SYSTEM);
  return {
    code: pama.code,
    label: RATING_LABELS[pama.code] ?? pama.display ?? pama.code,
    category: other?.display ?? other?.code ?? null,
    consultId: extensions.find((ext) => ext.url === PAMA_CONSULT_ID)?.valueUri ?? null,
    aucApplied: extensions.find((ext) => ext.url === PAMA_AUC_APPLIED)?.valueUri ?? null,
  };
}

/** Order reference -> rating, from a response's update system actions. */
export function ratingsFrom(response) {
  const ratings = new Map();
  for (const action of systemActionsOf(response)) {
    if (action.type !== "update" || !action.resource?.id) continue;
    const rating = ratingOf(action.resource);
    if (rating) ratings.set(refOf(action.resource), rating);
  }
  return ratings;
}

/** "ServiceRequest/abc" from an action (resourceId, or the deprecated id string in resource, or resource.id). */
function targetOf(action) {
  if (action.resourceId) return action.resourceId;
  if (typeof action.resource === "string") return action.resource.includes("/") ? action.resource : null;
  return action.resource?.resourceType && action.resource?.id ? refOf(action.resource) : null;
}

/**
 * Apply a suggestion's actions to the basket, as a transaction: deletes first, then creates, then updates.
 * newId() gives an id for a created order that has none (the EHR assigns ids). Returns the new basket
 * and one line per action for the page to announce.
 */
export function applyActions(basket, actions, newId) {
  let orders = basket.map((order) => ({ ...order }));
  const notes = [];
  const rank = { delete: 0, create: 1, update: 2 };
  const sorted = [...(actions ?? [])].sort((a, b) => (rank[a.type] ?? 3) - (rank[b.type] ?? 3));
  for (const action of sorted) {
    const target = targetOf(action);
    if (action.type === "delete") {
      const before = orders.length;
      orders = orders.filter((order) => refOf(order.resource) !== target);
      notes.push(before === orders.length ? `nothing to remove: ${target} is not in the basket` : `removed ${target}`);
    } else if (action.type === "create" && action.resource?.resourceType) {
      const resource = structuredClone(action.resource);
      if (!resource.id || orders.some((order) => refOf(order.resource) === refOf(resource))) resource.id = newId();
      orders.push({ resource, selected: true });
      notes.push(`added ${refOf(resource)}`);
    } else if (action.type === "update" && action.resource?.resourceType) {
      const index = orders.findIndex((order) => refOf(order.resource) === target);
      if (index < 0) {
        notes.push(`not applied: ${target} is not in the basket`);
      } else {
        orders[index] = { ...orders[index], resource: structuredClone(action.resource) };
        notes.push(`updated ${target}`);
      }
    } else {
      notes.push(`not applied: unsupported action ${JSON.stringify(action.type)}`);
    }
  }
  return { basket: orders, notes };
}

/** RFC 3339 UTC timestamp for outcomeTimestamp. */
export function timestamp(date = new Date()) {
  return date.toISOString();
}

/** The feedback body for an accepted suggestion. */
export function acceptedFeedback(card, suggestion, when = new Date()) {
  return {
    feedback: [
      {
        card: card.uuid,
        outcome: "accepted",
        acceptedSuggestions: [{ id: suggestion.uuid }],
        outcomeTimestamp: timestamp(when),
      },
    ],
  };
}

/** The feedback body for a dismissed card; reason is a Coding from card.overrideReasons (or null). */
export function overriddenFeedback(card, reason, comment, when = new Date()) {
  const item = { card: card.uuid, outcome: "overridden", outcomeTimestamp: timestamp(when) };
  const override = {};
  if (reason) override.reason = compact({ system: reason.system, code: reason.code, display: reason.display });
  if (comment && comment.trim()) override.userComment = comment.trim();
  if (Object.keys(override).length) item.overrideReason = override;
  return { feedback: [item] };
}

/** The diagnostics of an OperationOutcome (or a short description of any other error body). */
export function diagnosticsOf(body) {
  if (body?.resourceType === "OperationOutcome") {
    const lines = (body.issue ?? [])
      .map((issue) => issue.diagnostics ?? issue.details?.text ?? issue.code)
      .filter(Boolean);
    if (lines.length) return lines.join("; ");
  }
  return null;
}

/** A display name for a CodeableConcept. */
export function conceptText(concept) {
  if (!concept) return "";
  return concept.text ?? concept.coding?.find((c) => c.display)?.display ?? concept.coding?.[0]?.code ?? "";
}

/** Short code list for a CodeableConcept: "CPT 72148 · LOINC 30679-5". */
export function codeSummary(concept) {
  const names = {
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://www.radlex.org": "RadLex",
  };
  return (concept?.coding ?? [])
    .filter((coding) => coding.code)
    .map((coding) => `${names[coding.system] ?? coding.system ?? "code"} ${coding.code}`)
    .join(" · ");
}

/** The orderable concept of a draft order (ServiceRequest.code, MedicationRequest.medicationCodeableConcept ...). */
export function orderConcept(resource) {
  return resource.code ?? resource.medicationCodeableConcept ?? null;
}
