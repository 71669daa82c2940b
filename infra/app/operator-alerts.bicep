// Alerts about the bridge itself, for the people who run it: log search alert rules over the bridge's
// own telemetry (customMetrics in the workspace-based Application Insights component) and the action
// group they notify. Never the bridge's own secure-webhook action group: an alert that the bridge is
// failing must not depend on the bridge to be heard.
//
// Who hears them:
//   existingActionGroupId given   the rules notify that group (a team's paging or ticketing group)
//   else operatorEmails given     an operator action group with one e-mail receiver per address
//   neither                       the rules still exist and fire, visible under Monitor > Alerts, with
//                                 no notification (add a group later; the rules follow on redeploy)
//
// Metric names and dimensions are the bridge's OpenTelemetry instruments (customMetrics: the
// instrument's name in `name`, its attributes in customDimensions); the gauges are reported every
// 5 minutes by the outbox sweep timer, hence the 15 and 30 minute windows.
param location string
param tags object

@description('Resource id of the workspace-based Application Insights component the bridge reports to; the rules query it.')
param applicationInsightsId string

@description('Resource id of an existing action group to notify (never the bridge\'s own). Empty: see operatorEmails.')
param existingActionGroupId string = ''

@description('E-mail addresses for a new operator action group; used only when existingActionGroupId is empty. Empty too: no notifications.')
param operatorEmails array = []

@description('Name of the operator action group created for operatorEmails.')
param actionGroupName string
@maxLength(12)
param actionGroupShortName string

@description('Rule names are <rulePrefix><key><ruleSuffix>, e.g. sqr-itsm-failed-<token>.')
param rulePrefix string
param ruleSuffix string

@description('Where the operator reads what to do; carried in every alert (customProperties.runbook).')
param runbook string = 'README.md, section "Operating the bridge"'

var createActionGroup = empty(existingActionGroupId) && !empty(operatorEmails)

resource operatorGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (createActionGroup) {
  name: actionGroupName
  // Global, like the bridge's group: the operator may reuse it for Service Health alerts.
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: actionGroupShortName
    enabled: true
    emailReceivers: [for (address, i) in operatorEmails: {
      name: 'operator-${i + 1}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
  }
}

// The conditional is written without a leading "!": pycep-parser (tests/infra, checkov) would bind the
// negation to the whole conditional.
var notify = empty(existingActionGroupId) ? (createActionGroup ? [operatorGroup.id] : []) : [existingActionGroupId]

// One entry per rule: what it watches (query over customMetrics, classic App Insights column names),
// how the result is judged (aggregation of the measure column, operator, threshold), how often and
// over which window, and what the operator does about it (description).
var rules = [
  {
    key: 'failed'
    displayName: 'ITSM bridge: alerts failed (rejected or unavailable)'
    description: 'Alerts failed. Path http: the bridge answered 502 (the ITSM permanently refused the change; it is dead-lettered) or 503 (nothing could be recorded: state store or signing keys unreachable, or bad settings; Azure Monitor retries a few times, then gives up). Path outbox: a pass dead-lettered a change or could not reach the state store. Rejected: read the ITSM\'s message in the workbook (Problems), fix the mapping or field, then python -m bridge outbox replay. Unavailable: open /api/health?deep=1 and fix the check it names. See README, "Operating the bridge".'
    severity: 1
    query: '''
customMetrics
| where name == "bridge.alerts"
| extend outcome = tostring(customDimensions["outcome"]), path = tostring(customDimensions["path"])
| where outcome in ("rejected", "unavailable")
| project timestamp, outcome, path, failed = valueSum
'''
    timeAggregation: 'Total'
    measure: 'failed'
    operator: 'GreaterThan'
    threshold: 0
    // One alert per outcome and path (http: the answer to Azure Monitor; outbox: a later pass).
    dimensions: [
      {
        name: 'outcome'
        operator: 'Include'
        values: [
          '*'
        ]
      }
      {
        name: 'path'
        operator: 'Include'
        values: [
          '*'
        ]
      }
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
  }
  {
    key: 'slow'
    displayName: 'ITSM bridge: slow answers (over 5 s)'
    description: 'An alert took more than 5 s to answer; Azure Monitor gives up after about 10 s and retries. Usually a slow ITSM inside the inline budget (ITSM_INLINE_SECONDS) or a cold start plus signing-key fetch: compare the latency and ITSM call charts in the workbook, and consider alwaysReadyInstances=1. See README, "Operating the bridge".'
    severity: 2
    query: '''
customMetrics
| where name == "bridge.alert.duration"
| project timestamp, slowest_ms = valueMax
'''
    timeAggregation: 'Maximum'
    measure: 'slowest_ms'
    operator: 'GreaterThan'
    threshold: 5000
    dimensions: []
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
  }
  {
    key: 'dead-letters'
    displayName: 'ITSM bridge: dead-lettered events'
    description: 'The ITSM permanently refused changes; they are parked as dead letters and are not retried on their own. Run python -m bridge outbox list to see each reason, fix the cause (mapping, field, ITSM data policy), then python -m bridge outbox replay KEY (or --all). Resolves when no dead letters remain. See README, "Operating the bridge".'
    severity: 2
    query: '''
customMetrics
| where name == "bridge.outbox.dead_letters"
| project timestamp, dead_letters = valueMax
'''
    timeAggregation: 'Maximum'
    measure: 'dead_letters'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: []
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
  }
  {
    key: 'stuck'
    displayName: 'ITSM bridge: work pending over 10 minutes'
    description: 'An accepted alert has waited more than 10 minutes for its ITSM change: the ITSM is down, slow or refusing the credential. The outbox delivers on its own once the ITSM answers; check /api/health?deep=1 and the ITSM calls chart in the workbook to see which. See README, "Operating the bridge".'
    severity: 2
    query: '''
customMetrics
| where name == "bridge.outbox.oldest_pending_age"
| project timestamp, oldest_pending_s = valueMax
'''
    timeAggregation: 'Maximum'
    measure: 'oldest_pending_s'
    operator: 'GreaterThan'
    threshold: 600
    dimensions: []
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
  }
  {
    key: 'degraded'
    displayName: 'ITSM bridge: health degraded (ITSM refuses the credential)'
    description: 'The ITSM refuses the bridge\'s credential (401/403): /api/health says degraded and every change is held. Rotate the secret in Key Vault (infra/README.md, "Rotate the ITSM secrets") and restart the app; the held work is delivered afterwards. See README, "Operating the bridge".'
    severity: 1
    query: '''
customMetrics
| where name == "bridge.credential.refused"
| project timestamp, refused = valueMax
'''
    timeAggregation: 'Maximum'
    measure: 'refused'
    operator: 'GreaterThanOrEqual'
    threshold: 1
    dimensions: []
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
  }
  {
    key: 'silent'
    displayName: 'ITSM bridge: silent (no outbox report for 30 minutes)'
    description: 'The outbox sweep has reported nothing for 30 minutes: the app is not running (code not deployed yet, failing at start, bad settings) or cannot send telemetry (Monitoring Metrics Publisher on Application Insights). Check /api/health, the Function app\'s log stream and its role assignments. See README, "Operating the bridge".'
    severity: 2
    query: '''
customMetrics
| where name == "bridge.outbox.pending"
| project timestamp
'''
    // Count of rows: no measure column.
    timeAggregation: 'Count'
    measure: ''
    operator: 'LessThan'
    threshold: 1
    dimensions: []
    evaluationFrequency: 'PT15M'
    windowSize: 'PT30M'
  }
]

// No managed identity: the rules query an Application Insights component in their own resource group,
// which log search alerts read without one.
resource bridgeRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in rules: {
  name: '${rulePrefix}${rule.key}${ruleSuffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: rule.evaluationFrequency
    windowSize: rule.windowSize
    // Resolved alerts close themselves (a replayed dead letter, a restored credential).
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: rule.timeAggregation
          metricMeasureColumn: empty(rule.measure) ? null : rule.measure
          dimensions: rule.dimensions
          operator: rule.operator
          threshold: rule.threshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify
      customProperties: {
        runbook: runbook
      }
    }
  }
}]

// join(): notify holds at most one id, and no branch indexes an empty array.
@description('The action group the rules notify; empty when there is none.')
output actionGroupId string = join(notify, ',')
