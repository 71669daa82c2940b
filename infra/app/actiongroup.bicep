// The action group that calls the bridge through a secure webhook: Entra ID authenticated (useAadAuth,
// the webhook app's object id, Application ID URI and tenant) and in the common alert schema.
// Optionally two example alert rules that use it.
@description('Action group name.')
param name string
@maxLength(12)
param shortName string
param tags object

@description('https://<function app host>/api/alerts')
param serviceUri string
@description('Object id of the Entra application (not its client id).')
param webhookAppObjectId string
param webhookIdentifierUri string
param tenantId string

param deployExampleAlerts bool = false
@description('Region of the log search alert rule.')
param location string
param functionAppId string
param applicationInsightsId string
param metricAlertName string
param logAlertName string

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: name
  // Global: Service Health alerts can only use global action groups.
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: shortName
    enabled: true
    webhookReceivers: [
      {
        name: 'itsm-bridge'
        serviceUri: serviceUri
        useCommonAlertSchema: true
        useAadAuth: true
        objectId: webhookAppObjectId
        identifierUri: webhookIdentifierUri
        tenantId: tenantId
      }
    ]
  }
}

// Example 1: the bridge's own HTTP 5xx answers. Alerts about the bridge also reach the bridge, so
// production setups usually add a second, human channel (e-mail) for these.
resource http5xxAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = if (deployExampleAlerts) {
  name: metricAlertName
  location: 'global'
  tags: tags
  properties: {
    description: 'The ITSM bridge answered with HTTP 5xx (example rule).'
    severity: 2
    enabled: true
    scopes: [
      functionAppId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'http5xx'
          metricNamespace: 'Microsoft.Web/sites'
          metricName: 'Http5xx'
          operator: 'GreaterThan'
          threshold: 5
          timeAggregation: 'Total'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// Example 2: a log search alert on the bridge's 502 (ITSM rejected) and 503 (ITSM unavailable) answers.
resource unavailableAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = if (deployExampleAlerts) {
  name: logAlertName
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'ITSM bridge could not deliver alerts (example rule)'
    description: 'Requests to /api/alerts answered 502 or 503 in the last 15 minutes.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'requests | where url has "/api/alerts" and resultCode in ("502", "503")'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output id string = actionGroup.id
output name string = actionGroup.name
